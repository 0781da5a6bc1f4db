"""UniTok: every vision-language task as a prompt turned into a token sequence."""
__version__ = "0.1.0"
