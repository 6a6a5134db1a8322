"""A tiny Gemma 3 language model of the real class (``Gemma3ForCausalLM``, random weights) with a small
word-level tokenizer that has Gemma's special tokens, written as the GGUF conversion writes the real one."""
from pathlib import Path

import torch

SPECIAL = ("<pad>", "<eos>", "<bos>", "<unk>")


def tiny_tokenizer(words):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIAL)}
    for w in ["question", ":", "answer", *sorted(words)]:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>",
                                   unk_token="<unk>")
    fast.add_tokens(["\n"])  # a plain token, as Gemma's "\n" (id 107) is
    fast.add_special_tokens({"additional_special_tokens": ["<start_of_image>"]})
    return fast


def tiny_gemma_lm(out: Path, words, seed: int = 0) -> Path:
    """A converted-looking folder (``safe.bench.gemma.lm.write_checkpoint``) of a 2-layer Gemma 3 text model."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from safe.bench.gemma.lm import write_checkpoint

    tok = tiny_tokenizer(words)
    cfg = Gemma3TextConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=2, num_key_value_heads=1, head_dim=32, max_position_embeddings=256,
                           sliding_window=16, pad_token_id=0, eos_token_id=1, bos_token_id=2,
                           tie_word_embeddings=True)
    torch.manual_seed(seed)
    model = Gemma3ForCausalLM(cfg).eval()
    return write_checkpoint(model, tok, out, {"converter_version": 1, "gguf_sha256": "tiny-test-model"})
