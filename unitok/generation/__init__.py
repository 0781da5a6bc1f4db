"""Decoding under task grammars: greedy, sampling, beam search, guidance, and candidate scoring."""
from .beam import beam_search
from .constraints import Constraint
from .decode import EncoderInputs, Generated, generate
from .options import DecodingOptions, RowSettings
from .scoring import score_candidates

__all__ = ["Constraint", "DecodingOptions", "EncoderInputs", "Generated", "RowSettings", "beam_search",
           "generate", "score_candidates"]
