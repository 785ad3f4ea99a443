"""roost.api"""
