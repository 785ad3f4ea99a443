"""roost.chat"""
