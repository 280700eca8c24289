"""Knowledge-set test helpers: valid items from the project's generator, files, a locally trained BPE."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

REFERENCE_FILE = Path("fictional-knowledge") / "fictional_knowledge_paraphrased.json"


def valid_items(n: int = 2, paraphrases: int = 1, seed: int = 0) -> list[dict[str, Any]]:
    from fictional_knowledge.generate import generate_knowledge

    return copy.deepcopy(generate_knowledge(n, paraphrases, seed))


def placeholder_set(n: int, paraphrases: int = 9, paraphrased: range | None = None):
    """A KnowledgeSet of `n` paragraphs with placeholder text, for plans that look only at indices."""
    from fictional_knowledge.model import KnowledgeSet, Paragraph

    paraphrased = range(n) if paraphrased is None else paraphrased
    return KnowledgeSet(
        tuple(
            Paragraph(
                i, f"paragraph {i}", tuple(f"p{i} v{j}" for j in range(1, paraphrases + 1)) if i in paraphrased else ()
            )
            for i in range(n)
        )
    )


def write_json(path: Path, obj: Any) -> Path:
    path.write_text(json.dumps(obj, ensure_ascii=False), encoding="utf-8")
    return path


def byte_level_bpe(texts: list[str], vocab_size: int = 400, trim_offsets: bool = True):
    """A GPT-2-style byte-level BPE tokenizer trained in memory on `texts` (seconds, no network)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    # Like GPT-2: offsets either trimmed to the word, or covering the merged leading space.
    tok.post_processor = processors.ByteLevel(trim_offsets=trim_offsets)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")
