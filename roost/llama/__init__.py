"""roost.llama"""
