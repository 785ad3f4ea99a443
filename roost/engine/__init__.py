"""roost.engine"""
