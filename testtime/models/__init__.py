"""Model backends behind one async interface; select them by spec string."""

from testtime.models.base import Capabilities, Generation, GenerationRequest, Model, TokenLogprob
from testtime.models.prices import Price, set_price
from testtime.models.registry import BACKENDS, load_model, parse_spec
from testtime.models.scripted import FunctionModel, ScriptedModel

__all__ = [
    "BACKENDS", "Capabilities", "FunctionModel", "Generation", "GenerationRequest", "Model",
    "Price", "ScriptedModel", "TokenLogprob", "load_model", "parse_spec", "set_price",
]
