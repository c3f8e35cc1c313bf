"""SD text encoding of the instructions: CLIP tokenizer (77 tokens) + CLIP text encoder.

As in the release: pad to max_length 77 with truncation, call the encoder *without* an attention mask,
take ``last_hidden_state`` (after the final LayerNorm, no clip-skip). The negative text is "".
"""
from __future__ import annotations


import torch

MAX_LENGTH = 77


def load_tokenizer(path):
    """Load the SD CLIP tokenizer from a local folder and make sure it is not an empty stand-in.

    transformers 5 can silently return a 2-token tokenizer when files are missing; refuse that.
    """
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(str(path), local_files_only=True)
    if len(tok) < 256:  # an offline mis-load yields a 2-token tokenizer
        raise OSError(f"tokenizer in {path} has only {len(tok)} tokens: vocab.json/merges.txt missing or unreadable")
    return tok


def tokenize(tokenizer, prompts) -> torch.Tensor:
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    return tokenizer(prompts, padding="max_length", max_length=MAX_LENGTH, truncation=True,
                     return_tensors="pt").input_ids


class TextEncoder:
    """Callable prompt(s) -> (B, 77, D) embeddings, with a small cache (instructions repeat a lot)."""

    def __init__(self, tokenizer, encoder):
        self.tokenizer = tokenizer
        self.encoder = encoder
        self._cache: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def __call__(self, prompts) -> torch.Tensor:
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        missing = [p for p in dict.fromkeys(prompts) if p not in self._cache]
        if missing:
            ids = tokenize(self.tokenizer, missing).to(self.encoder.device)
            out = self.encoder(ids).last_hidden_state  # no attention mask, as officially
            for p, e in zip(missing, out):
                self._cache[p] = e
            if len(self._cache) > 256:  # bounded: a long loop with free text must not grow forever
                for k in list(self._cache)[: len(self._cache) - 256]:
                    del self._cache[k]
        return torch.stack([self._cache[p] for p in prompts])

    def clear(self):
        self._cache.clear()
