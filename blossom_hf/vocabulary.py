"""The item vocabulary (raw item id <-> model index); defined in the model folder so Hub code has it."""

from .models.blossomrec.item_vocabulary import VOCABULARY_FILE, ItemVocabulary, UnknownItemError

__all__ = ["VOCABULARY_FILE", "ItemVocabulary", "UnknownItemError"]
