"""Causal-LM tokenizers for C4 pre-training.

- "t5-base" (the paper's, as in GaLore): a hub tokenizer via AutoTokenizer; needs network or a local cache.
- "mistral-sp" (OFFLINE_LLAMA_TOKENIZER): the LLaMA-style 32000-piece SentencePiece model shipped in the
  `mistral-common` pip package (mistral_common/data/tokenizer.model.v1), loaded offline as a transformers
  fast tokenizer that encodes exactly like `sentencepiece` (vocab 32000, BOS 1, EOS 2, no BOS added).

Vocabulary vs model: t5-base has 32100 ids (32000 pieces + 100 <extra_id_*> sentinels) while the paper's
LLaMA configs use vocab_size 32000. An id >= the model's vocab would index past the embedding table, so the
runner must build the model with `vocab_size_for(tokenizer, model_cfg["vocab_size"])`, which widens the
vocab to cover every id the tokenizer can emit (32100 for t5-base, unchanged 32000 for mistral-sp). In
practice plain C4 text never produces t5's sentinel ids, so the extra 100 rows just stay unused.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path

from gnlorp.data_fingerprint import cache_root
from gnlorp.errors import UserError

OFFLINE_LLAMA_TOKENIZER = "mistral-sp"

PROBE_TEXT = "The quick brown fox jumps over the lazy dog."
_MISTRAL_FILE = ("data", "tokenizer.model.v1")
SPIECE_UNDERLINE = "\u2581"


def mistral_sp_model_file() -> Path:
    """The SentencePiece model file inside the installed mistral-common package."""
    try:
        import mistral_common
    except ImportError:
        raise UserError(f"model.tokenizer={OFFLINE_LLAMA_TOKENIZER} needs the mistral-common package, which is not "
                        f"installed; install it with `pip install mistral-common` (or `pip install -e .[offline]`).") from None
    path = Path(mistral_common.__file__).resolve().parent.joinpath(*_MISTRAL_FILE)
    if not path.is_file():
        raise UserError(f"the installed mistral-common has no {'/'.join(_MISTRAL_FILE)} (looked for {path}); "
                        f"reinstall it with `pip install --force-reinstall mistral-common`.")
    return path


_CACHE_FORMAT = "v2"  # bump when the recipe of the cached tokenizer.json changes
_PARITY_PROBES = ("The quick brown fox", "  two leading spaces", "a  b   c    d", " " * 17 + "x", "x\n  y",
                  "ünïcödé  ★ 1234567", "tab\t\tx", "raw <s> and </s> in text", "   ")


def _to_pair(merge) -> list[str]:
    return list(merge) if isinstance(merge, (list, tuple)) else str(merge).split(" ")


def _build_mistral_sp_json(model_file: Path, workdir: Path) -> str:
    """tokenizer.json for the SentencePiece model that encodes exactly like sentencepiece itself.

    Starts from transformers' own conversion (LlamaTokenizer.from_pretrained on a folder holding only
    tokenizer.model) and fixes its two divergences from sentencepiece, which showed up on 7 of the first
    1000 C4 train documents: (1) the whitespace-run pieces ("▁▁", "▁▁▁", ...) carry score -1e9 in this
    model, so sentencepiece merges them last, but the conversion ranks them first ("▁▁▁▁▁NE" became
    "▁▁▁▁▁"+"NE" instead of "▁▁▁▁"+"▁NE"): merges are re-sorted (stably) by the score of the merged piece;
    (2) Metaspace(prepend_scheme="first") skips the dummy "▁" when the text already starts with a space:
    replaced by the classic normalizer Prepend("▁") + Replace(" ", "▁") with no pre-tokenizer.
    """
    import sentencepiece as spm
    from transformers import LlamaTokenizer

    convert_dir = workdir / "convert"
    convert_dir.mkdir()
    shutil.copyfile(model_file, convert_dir / "tokenizer.model")
    spec = json.loads(LlamaTokenizer.from_pretrained(str(convert_dir)).backend_tokenizer.to_str())
    shutil.rmtree(convert_dir, ignore_errors=True)

    sp = spm.SentencePieceProcessor(model_file=str(model_file))

    def merged_score(pair: list[str]) -> float:
        piece = "".join(pair)
        idx = sp.piece_to_id(piece)
        return sp.get_score(idx) if sp.id_to_piece(idx) == piece else float("-inf")

    merges = [_to_pair(m) for m in spec["model"]["merges"]]
    spec["model"]["merges"] = sorted(merges, key=lambda pair: -merged_score(pair))  # stable: ties keep order
    spec["normalizer"] = {"type": "Sequence", "normalizers": [
        {"type": "Prepend", "prepend": SPIECE_UNDERLINE},
        {"type": "Replace", "pattern": {"String": " "}, "content": SPIECE_UNDERLINE},
    ]}
    spec["pre_tokenizer"] = None
    return json.dumps(spec, ensure_ascii=False)


def _mistral_sp_folder() -> Path:
    """A folder with the SentencePiece file as `tokenizer.model` plus the derived `tokenizer.json`.

    Lives in <cache>/gnlorp/mistral-sp/<sha256 prefix>-<format>/ (<cache> = $GNLORP_CACHE_DIR, else
    $XDG_CACHE_HOME or ~/.cache), built in a temp folder and renamed into place (atomic; concurrent runs
    race harmlessly) and reused when present; the hash in the name gives a changed mistral-common file a
    fresh folder. If the cache is not writable, a private temp folder is used.
    """
    src = mistral_sp_model_file()
    data = src.read_bytes()
    digest = hashlib.sha256(data).hexdigest()[:16]
    parent = cache_root() / OFFLINE_LLAMA_TOKENIZER
    final = parent / f"{digest}-{_CACHE_FORMAT}"

    def complete(folder: Path) -> bool:
        model = folder / "tokenizer.model"
        return model.is_file() and model.stat().st_size == len(data) and (folder / "tokenizer.json").is_file()

    if complete(final):
        return final
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=parent))
    except OSError:
        tmp = Path(tempfile.mkdtemp(prefix="gnlorp-mistral-sp-"))
        final = tmp  # read-only cache: build in place, for this process only
    try:
        (tmp / "tokenizer.model").write_bytes(data)
        (tmp / "tokenizer.json").write_text(_build_mistral_sp_json(src, tmp), encoding="utf-8")
        if tmp == final:
            return final
        try:
            os.rename(tmp, final)
        except OSError:
            if not complete(final):  # a stale, broken folder is in the way (not a finished concurrent build)
                shutil.rmtree(final, ignore_errors=True)
                os.rename(tmp, final)
    finally:
        if tmp != final and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _load_mistral_sp():
    """The offline LLaMA tokenizer as a transformers fast tokenizer (full HF API) that encodes exactly like
    sentencepiece on the same model file. Not LlamaTokenizer(vocab_file=...) nor AutoTokenizer: with
    transformers 5.x the former silently builds an empty tokenizer and the latter drops the leading "▁".
    Special-token strings in raw text ("<s>", "</s>") are encoded as text, as sentencepiece does."""
    import sentencepiece as spm
    from transformers import PreTrainedTokenizerFast

    folder = _mistral_sp_folder()
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"), bos_token="<s>",
                                        eos_token="</s>", unk_token="<unk>", split_special_tokens=True)
    sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    for text in _PARITY_PROBES:
        if tokenizer(text, add_special_tokens=False)["input_ids"] != sp.encode(text):
            # A future transformers may convert differently: fall back to its plain conversion, which agrees
            # with sentencepiece on all but whitespace runs.
            from transformers import LlamaTokenizer

            warnings.warn(f"the derived mistral-sp tokenizer.json in {folder} disagrees with sentencepiece on "
                          f"{text!r}; using transformers' own conversion instead (whitespace runs may differ).")
            return LlamaTokenizer.from_pretrained(str(folder))
    return tokenizer


def _load_hub_tokenizer(name: str):
    from transformers import AutoTokenizer

    from gnlorp.models import _hub_errors, resolve_path

    path = resolve_path(name)
    try:
        return AutoTokenizer.from_pretrained(os.path.expanduser(path))
    except _hub_errors() as exc:
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"tokenizer {name!r} could not be loaded ({first_line}); offline it needs a local Hugging Face "
                        f"cache, so use model.tokenizer={OFFLINE_LLAMA_TOKENIZER} (the offline 32000-piece LLaMA "
                        f"SentencePiece tokenizer) or point model.tokenizer at a local tokenizer folder.") from None


def check_tokenizer(tokenizer, name: str = "tokenizer") -> None:
    """Encode a probe sentence; UserError if it comes out empty (the silent-empty-tokenizer trap) or if the
    tokenizer has no EOS token (C4 packing separates documents with EOS)."""
    ids = tokenizer(PROBE_TEXT, add_special_tokens=False)["input_ids"]
    if len(ids) == 0:
        raise UserError(f"tokenizer {name!r} encodes the probe sentence {PROBE_TEXT!r} to [] (an empty tokenizer, e.g. "
                        f"LlamaTokenizer(vocab_file=...) under transformers 5); load it from a folder with "
                        f"from_pretrained or use model.tokenizer={OFFLINE_LLAMA_TOKENIZER}.")
    if getattr(tokenizer, "eos_token_id", None) is None:
        raise UserError(f"tokenizer {name!r} has no EOS token, which C4 packing needs between documents; "
                        f"use a causal-LM tokenizer such as t5-base or {OFFLINE_LLAMA_TOKENIZER}.")


def load_causal_tokenizer(name: str):
    """"mistral-sp" -> the offline LLaMA SentencePiece tokenizer (vocab 32000, BOS 1, EOS 2, no BOS added by
    default); anything else ("t5-base", a hub id, a local folder, "pip:<module>") -> AutoTokenizer.
    Every tokenizer is probed (check_tokenizer) before it is returned."""
    name = str(name).strip()
    if not name:
        raise UserError(f"model.tokenizer is empty; set it to t5-base (the paper's) or {OFFLINE_LLAMA_TOKENIZER} (offline).")
    tokenizer = _load_mistral_sp() if name == OFFLINE_LLAMA_TOKENIZER else _load_hub_tokenizer(name)
    check_tokenizer(tokenizer, name)
    return tokenizer


def vocab_size_for(tokenizer, configured: int) -> int:
    """The model vocab size to build with: max(configured, every id the tokenizer can emit + 1), so no token id
    can index past the embedding table (t5-base: 32100 > the paper's 32000)."""
    size = len(tokenizer)
    try:
        vocab = tokenizer.get_vocab()
        if vocab:
            size = max(size, max(vocab.values()) + 1)
    except (AttributeError, NotImplementedError, TypeError):
        pass
    return max(int(configured), int(size))


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash that changes when the tokenizer's encoding could: its full serialized form for a fast tokenizer,
    else its class, name, EOS and vocabulary."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        text = backend.to_str()
    else:
        vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else None
        text = json.dumps([type(tokenizer).__module__, type(tokenizer).__qualname__,
                           getattr(tokenizer, "name_or_path", ""), getattr(tokenizer, "eos_token_id", None),
                           sorted(vocab.items()) if vocab else None])
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
