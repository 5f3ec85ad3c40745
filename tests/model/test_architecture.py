"""msclip's own CLIP build and BPE tokenizer against OpenCLIP's (the reference implementation):
same parameter names and seeded weights, bit-identical outputs, the same tokens; and what a
command-line run imports."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from support.fused import fused_model

import msclip
from msclip.architecture import CLIP, IMPL_ENV, supports
from msclip.factory import get_arch_config
from msclip.tokenizer import CLIPTokenizer


@pytest.mark.parametrize("arch", ["msclip-tiny", "msclip-demo"])
def test_same_weights_names_and_outputs_as_open_clip(arch: str) -> None:
    from open_clip.model import CLIP as OpenCLIP

    cfg = get_arch_config(arch)
    torch.manual_seed(3)
    ours = CLIP(**cfg).eval()
    torch.manual_seed(3)
    ref = OpenCLIP(**cfg).eval()
    a, b = ours.state_dict(), ref.state_dict()
    assert list(a) == list(b)  # names and order
    assert all(torch.equal(a[k], b[k]) for k in b)  # the same seeded initialisation
    size = cfg["vision_cfg"]["image_size"]
    x = torch.randn(3, 3, size, size)
    tokens = msclip.get_tokenizer(arch)(["a forest", "the sea, seen from a satellite", ""])
    with torch.inference_mode():
        assert torch.equal(ours.encode_image(x), ref.encode_image(x))
        assert torch.equal(ours.encode_text(tokens), ref.encode_text(tokens))
        kw = dict(indices=[0, -1], output_fmt="NCHW", output_extra_tokens=True)
        oi, ri = (
            ours.visual.forward_intermediates(x, **kw),
            ref.visual.forward_intermediates(x, **kw),
        )
        assert oi.keys() == ri.keys()
        assert all(torch.equal(u, v) for u, v in zip(oi["image_intermediates"],
                                                      ri["image_intermediates"]))  # fmt: skip
        assert torch.equal(oi["image_features"], ri["image_features"])
        emb = ours.visual._embeds(x)
        o2, r2 = (m.visual.transformer.forward_intermediates(emb, indices=1, stop_early=True)
                  for m in (ours, ref))  # fmt: skip
        assert torch.equal(o2[1][0], r2[1][0])
        assert [torch.equal(u, v) for u, v in zip(ours(x, tokens), ref(x, tokens))] == [True] * 3


def test_registered_models_use_the_own_build_and_the_switch_works(monkeypatch) -> None:
    model = msclip.create_model("msclip-tiny")
    assert isinstance(model.clip, CLIP)
    assert supports(get_arch_config("ViT-B-16"))[0]  # the Llama3-MS-CLIP architecture
    ok, why = supports({**get_arch_config("ViT-B-16"), "text_cfg": {"hf_model_name": "x"}})
    assert not ok and "hf_model_name" in why
    monkeypatch.setenv(IMPL_ENV, "open_clip")
    torch.manual_seed(0)
    theirs = msclip.create_model("msclip-tiny")
    assert type(theirs.clip).__module__ == "open_clip.model"
    torch.manual_seed(0)
    monkeypatch.delenv(IMPL_ENV)
    ours = msclip.create_model("msclip-tiny")
    x = torch.randn(2, 10, 32, 32)
    with torch.inference_mode():
        assert torch.equal(ours.encode_image(x), theirs.encode_image(x))


def test_tokenizer_equals_open_clip() -> None:
    import open_clip

    ref = open_clip.get_tokenizer("ViT-B-16")
    ours = msclip.get_tokenizer("Llama3-MS-CLIP-Base")
    assert isinstance(ours, CLIPTokenizer)
    texts = [
        "a satellite image of annual crop.", "Sea_or_Lake/2", "café déjà-vu", "NDVI 0.87 ±3%",
        "<start_of_text> twice <end_of_text>", "&amp;amp; entities", "tabs\tand\nlines  ",
        "日本語のテキスト", "emoji 🌍🛰️", "x" * 400, "it's we'll they'd I'M", "", "   ",
    ]  # fmt: skip
    assert torch.equal(ours(texts), ref(texts))
    assert torch.equal(ours(texts, 9), ref(texts, 9))  # cut to the context, end marker kept
    assert torch.equal(ours("one text"), ref("one text"))


def test_plain_ascii_is_cleaned_without_ftfy_exactly_as_with_it() -> None:
    """Printable ASCII without "&" (and tabs and line breaks) skips ftfy: the cleaned text equals
    what ftfy and the double HTML unescaping give, on random such texts and awkward ones; any
    other text goes through ftfy."""
    import html
    import random

    import ftfy

    from msclip import tokenizer as tok_module

    def slow(text: str) -> str:  # OpenCLIP's cleaning, whatever the text
        text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
        return " ".join(text.split()).lower()

    alphabet = [chr(c) for c in range(0x20, 0x7F) if chr(c) != "&"] + ["\t", "\n", "\r"] * 5
    rng = random.Random(0)
    texts = ["".join(rng.choices(alphabet, k=rng.randint(0, 60))) for _ in range(5000)]
    texts += ["a\rb", "x\r\n  y ", "<b>bold</b>", "it's", "\\u00e9 %20 %C3%A9", "''quoted''",
              "``tex``", "--", "...", "`~!@#$%^*()_+-={}[]|\\:;<>?,./",
              "Sea_or_Lake/2"]  # fmt: skip
    for text in texts:
        assert tok_module._PLAIN.fullmatch(text) is not None, repr(text)
        assert tok_module._clean(text) == slow(text), repr(text)
    for text in [
        "&amp;amp;lt; x",
        "caf\u00e9",
        "\u201cquoted\u201d",
        "x\x0by",
        "\x1b[31mred",
        "\x7f",
    ]:
        assert tok_module._PLAIN.fullmatch(text) is None, repr(text)  # these go through ftfy
        assert tok_module._clean(text) == slow(text), repr(text)


def test_ascii_prompts_do_not_import_ftfy() -> None:
    code = (
        "import sys; from pathlib import Path; from msclip.tokenizer import CLIPTokenizer; "
        "tok = CLIPTokenizer(); "
        "names = Path(sys.argv[1]).read_text().split(chr(10)); "
        "tok([f'a satellite image of {n}.' for n in names if n]); "
        "plain = 'ftfy' not in sys.modules; tok(['caf\u00e9']); "
        "print(plain, 'ftfy' in sys.modules)"
    )
    names = Path(msclip.__file__).parent / "eval" / "classnames" / "eurosat.txt"
    out = subprocess.run([sys.executable, "-c", code, str(names)], capture_output=True,
                         text=True, check=True).stdout.split()  # fmt: skip
    assert out == ["True", "True"]


def test_tokenizer_tables_are_read_on_first_use_and_released_until_the_next() -> None:
    import open_clip

    from msclip import tokenizer as tok_module

    ref = open_clip.get_tokenizer("ViT-B-16")
    tok_module._tables.cache_clear()
    ours = CLIPTokenizer()
    assert ours._tables is None  # nothing read yet: a run with every prompt cached never reads it
    encoder, _ = tok_module._tables(ours.bpe_path)
    assert (ours.sot_token_id, ours.eot_token_id, ours.vocab_size) == (
        encoder["<start_of_text>"], encoder["<end_of_text>"], len(encoder),
    )  # fmt: skip
    texts = ["a satellite image of a river.", "sea or lake", "herbaceous vegetation"]
    first = ours(texts)
    assert ours._tables is not None and torch.equal(first, ref(texts))
    ours.release()
    assert ours._tables is None and tok_module._tables.cache_info().currsize == 0
    assert torch.equal(ours(texts), first)  # read again, same ids


def test_a_merge_list_with_windows_line_ends_or_other_spacing_reads_the_same(tmp_path) -> None:
    """The merge list is split at once where each line is two pieces and one space; a copy with
    CRLF line ends or runs of spaces is read line by line, into the same tables."""
    import gzip

    from msclip.tokenizer import _tables, default_bpe_path

    with gzip.open(default_bpe_path(), "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")[:2001]  # the header and 2,000 merges
    copies = {"lf": "\n".join(lines), "crlf": "\r\n".join(lines), "cr": "\r".join(lines),
              "spaces": "\n".join(line.replace(" ", "   ") for line in lines)}  # fmt: skip
    tables = {}
    for name, text in copies.items():
        path = tmp_path / f"{name}.txt.gz"
        with gzip.open(path, "wt", encoding="utf-8", newline="") as f:
            f.write(text)
        tables[name] = _tables(str(path))
    assert len(tables["lf"][1]) == 2000 and ("i", "n") in tables["lf"][1]
    assert tables["crlf"] == tables["lf"] == tables["cr"] == tables["spaces"]


def test_the_merge_list_is_read_up_to_its_last_merge_used_into_the_whole_files_tables() -> None:
    """Only the header and the merges the vocabulary uses are decompressed (a quarter of CLIP's
    file); the tables equal those of the whole file read as text."""
    import gzip

    from msclip import tokenizer as tok_module

    path = str(tok_module.default_bpe_path())
    with gzip.open(path, "rt", encoding="utf-8") as f:
        whole = f.read()
    part = tok_module._merge_lines_text(path)
    assert len(part) < len(whole) / 2 and whole.startswith(part) and part.endswith("\n")
    merges = [tuple(line.split()) for line in whole.split("\n")[1 : tok_module._N_MERGES + 1]]
    tok_module._tables.cache_clear()
    try:
        encoder, ranks = tok_module._tables(path)
    finally:
        tok_module._tables.cache_clear()
    assert ranks == {pair: i for i, pair in enumerate(merges)}
    assert len(encoder) == 49408 and encoder["".join(merges[-1])] == 49405


def test_a_missing_merge_list_is_named_when_the_tokenizer_is_made(tmp_path) -> None:
    missing = tmp_path / "bpe.txt.gz"
    with pytest.raises(FileNotFoundError, match=r"bpe\.txt\.gz"):
        CLIPTokenizer(bpe_path=missing)


def test_a_classification_run_imports_neither_open_clip_nor_torchvision(tmp_path) -> None:
    """The start-up of the command-line programs: only torch and what they use (its table is a
    :class:`msclip.io.Table`, not a pandas DataFrame: ~0.17 s of import)."""
    code = f"""
import sys, numpy as np, msclip
from msclip.cli.inference import main
msclip.write_geotiff({str(tmp_path / "t.tif")!r},
                     np.random.default_rng(0).integers(1, 5000, (10, 32, 32)).astype('uint16'))
rc = main(['--run-classification', '--model-name', 'msclip-tiny', '--no-pretrained',
           '--images', {str(tmp_path / "t.tif")!r}, '--class-names', 'forest', 'sea',
           '--save-path', {str(tmp_path / "o.csv")!r}, '--no-text-cache', '--quiet'])
heavy = [m for m in ('open_clip', 'torchvision', 'transformers', 'timm', 'torch._dynamo',
                     'sympy', 'pandas') if m in sys.modules]
print('RESULT', rc, heavy)
"""
    import os
    from pathlib import Path

    repo = str(Path(msclip.__file__).resolve().parent.parent)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=tmp_path, env=env, check=True)  # fmt: skip
    assert "RESULT 0 []" in out.stdout, out.stdout + out.stderr


def test_fused_bf16_cpu_mlp_agrees_with_the_plain_path(monkeypatch) -> None:
    from msclip import architecture

    model = msclip.create_model("msclip-demo", pretrained=True, precision="bf16")
    x = torch.randn(4, 12, 64, 64)
    tokens = msclip.get_tokenizer(model)(["a forest", "a lake in the mountains"])
    with torch.inference_mode():
        fused = model.encode_image(x), model.encode_text(tokens)
        monkeypatch.setenv(architecture.FUSED_ENV, "0")
        plain = model.encode_image(x), model.encode_text(tokens)
    if not architecture._fused_mlp_works():
        pytest.skip("no fused bf16 oneDNN kernel in this torch build or on this CPU")
    for a, b in zip(fused, plain):
        assert not torch.equal(a, b)  # the fused kernel did run
        assert torch.nn.functional.cosine_similarity(a.float(), b.float()).min() > 0.9999
    with torch.enable_grad():  # runs that record gradients keep the plain path
        off = model.encode_image(x)
        monkeypatch.delenv(architecture.FUSED_ENV)
        on = model.encode_image(x)
    assert torch.equal(on, off)


def test_bf16_attention_is_two_products_up_to_its_size_and_the_fused_kernel_past_it(
    monkeypatch,
) -> None:
    """The bf16 CPU path's attention: two matrix products and a softmax for the sizes of image
    towers (the fused kernel is slower there), agreeing with the fused kernel to bf16 rounding;
    PyTorch's fused kernel past the token or score-size limit, and in float32."""
    from msclip import architecture

    g = torch.Generator().manual_seed(0)
    calls = []
    real = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(
        architecture.F,
        "scaled_dot_product_attention",
        lambda *a, **kw: calls.append(1) or real(*a, **kw),
    )

    def qkv(n: int, dtype: torch.dtype, b: int = 2) -> list[torch.Tensor]:
        # the layout the fused path hands over: views of one [b, n, 3, h, d] projection
        x = torch.randn(b, n, 3, 4, 16, generator=g).to(dtype)
        return list(x.permute(2, 0, 3, 1, 4).unbind(0))

    with torch.inference_mode():
        q, k, v = qkv(50, torch.bfloat16)
        explicit = architecture._attention_core(q, k, v)
        assert calls == []
        fused = real(q, k, v)
        assert explicit.shape == fused.shape and explicit.dtype == torch.bfloat16
        torch.testing.assert_close(explicit.float(), fused.float(), atol=2e-2, rtol=0)
        cos = torch.nn.functional.cosine_similarity(explicit.float(), fused.float(), dim=-1)
        assert cos.min() > 0.999
        architecture._attention_core(*qkv(architecture._EXPLICIT_ATTENTION_TOKENS + 1,
                                          torch.bfloat16, b=1))  # fmt: skip
        assert len(calls) == 1  # past the token limit
        monkeypatch.setattr(architecture, "_EXPLICIT_ATTENTION_BYTES", 2 * 4 * 50 * 50 * 2 - 1)
        architecture._attention_core(*qkv(50, torch.bfloat16))
        assert len(calls) == 2  # scores past the size limit
        q, k, v = qkv(50, torch.float32)
        assert torch.equal(architecture._attention_core(q, k, v), real(q, k, v))
        assert len(calls) == 3  # float32: the fused kernel


def test_text_tower_attention_takes_the_fused_path_with_its_causal_mask(monkeypatch) -> None:
    """In bf16 on a CPU the text tower's attention is the same two products and softmax as the
    image tower's, its causal mask added to the scores (PyTorch's fused kernel took 2.6-3.5 times
    as long at prompts' sizes), with unpacked weights; it agrees with the plain path to bf16
    rounding, and masks other than an additive one over the tokens keep the plain path."""
    from msclip import architecture

    model = fused_model("msclip-demo", pretrained=True)
    tokens = msclip.get_tokenizer(model)(["a forest", "a lake in the mountains", "sea"])
    seen = []
    real = architecture._attention_core

    def spy(q, k, v, mask=None):
        seen.append(None if mask is None else (tuple(mask.shape), mask.dtype))
        return real(q, k, v, mask)

    monkeypatch.setattr(architecture, "_attention_core", spy)
    with torch.inference_mode():
        fused = model.encode_text(tokens)
        monkeypatch.setenv(architecture.FUSED_ENV, "0")
        plain = model.encode_text(tokens)
    monkeypatch.delenv(architecture.FUSED_ENV)
    blocks = len(model.clip.transformer.resblocks)
    assert len(seen) == blocks  # each block once, none on the plain path
    n = seen[0][0][0]
    assert all(s == ((n, n), torch.bfloat16) for s in seen) and n < 77  # trimmed prompts
    assert not torch.equal(fused, plain)
    assert torch.nn.functional.cosine_similarity(fused.float(), plain.float()).min() > 0.9999
    assert not any(id(w) in architecture._PACKED for w in _tower_weights(model.clip.transformer))

    g = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(3, 2, 4, 9, 16, generator=g).unbind(0)
    causal = torch.full((9, 9), float("-inf")).triu(1)
    with torch.inference_mode():
        got = real(*(t.bfloat16() for t in (q, k, v)), causal.bfloat16()).float()
        ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=causal)
    torch.testing.assert_close(got, ref, atol=3e-2, rtol=0)
    assert torch.equal(got[:, :, 0], real(*(t[:, :, :1].bfloat16() for t in (q, k, v))).float()[
        :, :, 0])  # the first token sees itself alone: the mask did apply  # fmt: skip

    attn = model.clip.transformer.resblocks[0].attn
    x = torch.zeros(2, 5, attn.embed_dim, dtype=torch.bfloat16)
    with torch.inference_mode():
        assert architecture._use_fused_attention(attn, x, torch.zeros(5, 5))
        assert not architecture._use_fused_attention(attn, x, torch.ones(5, 5, dtype=torch.bool))
        assert not architecture._use_fused_attention(attn, x, torch.zeros(77, 77))
        assert not architecture._use_fused_attention(attn, x, torch.zeros(2, 5, 5))


@pytest.mark.parametrize("fp32", [False, True])
def test_last_image_block_runs_for_the_class_token_alone_on_the_fused_path(
    monkeypatch, fp32: bool
) -> None:
    """The image embedding reads only the class token of the last block: on the fused CPU path
    that block computes the other tokens' keys and values and nothing else of theirs, with the
    embeddings of the whole block (to float32 rounding; the tokens' rows are independent)."""
    from msclip import architecture
    from msclip.architecture import use_fused_fp32

    if fp32:
        model = msclip.create_model("msclip-demo", pretrained=True, precision="fp32")
        use_fused_fp32(model.clip.visual)
        if not architecture._fused_mlp_works(torch.float32):
            pytest.skip("no fused float32 oneDNN kernel in this torch build or on this CPU")
    else:
        model = fused_model("msclip-demo", pretrained=True)
    calls = []
    real = architecture._class_token_block
    monkeypatch.setattr(
        architecture, "_class_token_block", lambda b, x: calls.append(x.shape) or real(b, x)
    )
    x = torch.randn(3, 12, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        short = model.encode_image(x)
        assert len(calls) == 1 and calls[0][0] == 3
        monkeypatch.setattr(architecture, "_class_token_only", lambda visual, x: False)
        whole = model.encode_image(x)
    assert len(calls) == 1
    torch.testing.assert_close(short.float(), whole.float(), rtol=1e-5, atol=1e-5)


def test_last_image_block_runs_whole_where_its_tokens_are_observed(monkeypatch) -> None:
    """Every token of the last block is computed in the exact float32 path, with gradients, for
    intermediates, and where a forward hook on the tower's transformer, last block or ``ln_post``
    would see its output."""
    from msclip import architecture
    from msclip.precision_check import BF16_CHECK_ENV

    monkeypatch.setenv(BF16_CHECK_ENV, "0")  # its replica's blocks would count here
    calls = []
    real = architecture._class_token_block
    monkeypatch.setattr(
        architecture, "_class_token_block", lambda b, x: calls.append(1) or real(b, x)
    )
    x = torch.randn(2, 12, 64, 64)
    exact = msclip.create_model("msclip-demo", pretrained=True, precision="fp32")
    with torch.inference_mode():
        exact.encode_image(x)  # OpenCLIP's arithmetic, bit for bit
    fused = fused_model("msclip-demo", pretrained=True)
    visual = fused.clip.visual
    seen = []
    with torch.inference_mode():
        fused.forward_features(x, layers=[-1])
        for module in (visual.transformer, visual.transformer.resblocks[-1], visual.ln_post):
            handle = module.register_forward_hook(lambda m, i, o: seen.append(o.shape))
            fused.encode_image(x)
            handle.remove()
    with torch.enable_grad():
        fused.encode_image(x)
    assert calls == []
    n_tokens = visual.grid_size[0] * visual.grid_size[1] + 1
    assert [s[1] for s in seen] == [n_tokens, n_tokens, n_tokens]


def test_fused_path_stays_off_under_autocast_and_in_fp32() -> None:
    from msclip.precision_check import MIN_COSINE, cpu_bf16_agreement

    model = msclip.create_model("msclip-demo", pretrained=True, precision="fp32")
    verdict = cpu_bf16_agreement(model.config)  # None where bf16 is emulated (not checked)
    if verdict is not None and min(verdict.values()) < MIN_COSINE:
        pytest.skip("this CPU's bf16 kernels disagree with float32 (msclip.precision_check)")
    x = torch.randn(2, 12, 64, 64)
    with torch.inference_mode():
        ref = model.encode_image(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # bf16 activations, fp32 weights
            auto = model.encode_image(x)
    assert auto.dtype == torch.bfloat16 and torch.isfinite(auto.float()).all()
    assert torch.nn.functional.cosine_similarity(auto.float(), ref).min() > 0.999


def test_fused_float32_is_opt_in(monkeypatch) -> None:
    from msclip import architecture

    model = msclip.create_model("msclip-demo", pretrained=True, precision="fp32")
    x = torch.randn(3, 12, 64, 64)
    with torch.inference_mode():
        exact = model.encode_image(x)  # default: the plain path, bit-identical to OpenCLIP
        monkeypatch.setenv(architecture.FUSED_ENV, "all")
        fused = model.encode_image(x)
    if not architecture._fused_mlp_works(torch.float32):
        pytest.skip("no fused float32 oneDNN kernel in this torch build or on this CPU")
    assert not torch.equal(fused, exact)
    torch.testing.assert_close(fused, exact, rtol=1e-4, atol=1e-4)


def test_frozen_blocks_under_autograd_take_the_contiguous_projection(monkeypatch) -> None:
    """last-n fine-tuning: a frozen block in a step that records gradients gives the module's
    own result (to float32 rounding), through the path that avoids PyTorch's per-row weight copy."""
    import msclip.architecture as arch

    torch.manual_seed(0)
    block = arch.ResidualAttentionBlock(32, 4, 4.0, torch.nn.GELU)
    for p in block.parameters():
        p.requires_grad_(False)
    x = torch.randn(3, 7, 32)
    calls = []
    real = arch._frozen_self_attention
    monkeypatch.setattr(arch, "_frozen_self_attention", lambda *a: calls.append(1) or real(*a))
    out = block(x)
    assert calls, "the frozen path was not taken"
    ref = block.attn(block.ln_1(x), block.ln_1(x), block.ln_1(x), need_weights=False)[0]
    with torch.no_grad():
        assert torch.allclose(block.attention(block.ln_1(x)), ref, atol=1e-6)
    assert out.shape == x.shape
    calls.clear()
    with torch.no_grad():  # inference: the module's own path, unchanged
        block(x)
    assert not calls
    for p in block.parameters():  # a trained block: unchanged too
        p.requires_grad_(True)
    block(x)
    assert not calls


def _no_packing(monkeypatch) -> None:
    from msclip import architecture

    monkeypatch.setattr(architecture, "_packing_works", lambda dtype: False)


def _tower_weights(transformer) -> list[torch.Tensor]:
    return [w for b in transformer.resblocks
            for w in (b.attn.in_proj_weight, b.attn.out_proj.weight, b.mlp.c_fc.weight,
                      b.mlp.c_proj.weight)]  # fmt: skip


def test_cpu_image_tower_reads_packed_weights_with_the_plain_results(monkeypatch) -> None:
    from msclip import architecture

    model = fused_model("msclip-demo", pretrained=True)
    x = torch.randn(3, 12, 64, 64, generator=torch.Generator().manual_seed(0))
    tokens = msclip.get_tokenizer(model)(["a forest", "a lake in the mountains"])
    calls = []
    real = torch.ops.mkldnn._reorder_linear_weight
    monkeypatch.setattr(
        torch.ops.mkldnn, "_reorder_linear_weight", lambda w: calls.append(1) or real(w)
    )
    with torch.inference_mode():
        packed = model.encode_image(x), model.encode_text(tokens)
        again = model.encode_image(x)
    visual = _tower_weights(model.clip.visual.transformer)
    assert all(id(w) in architecture._PACKED for w in visual)  # the image tower's, each once
    assert len(calls) == len(visual)
    assert not any(id(w) in architecture._PACKED for w in _tower_weights(model.clip.transformer))
    _no_packing(monkeypatch)
    with torch.inference_mode():
        plain = model.encode_image(x), model.encode_text(tokens)
    assert torch.equal(packed[0], plain[0]) and torch.equal(again, plain[0])  # bit for bit
    assert torch.equal(packed[1], plain[1])
    model.release_weight_pages()  # the end of a run frees the copies
    assert not any(id(w) in architecture._PACKED for w in visual)


def test_packed_weights_follow_changes_to_the_weights() -> None:
    model = fused_model("msclip-demo", pretrained=True)
    other = msclip.create_model("msclip-demo", pretrained=False, precision=model.precision)
    x = torch.randn(2, 12, 64, 64, generator=torch.Generator().manual_seed(0))
    block = model.clip.visual.transformer.resblocks[1]

    def packed_and_plain() -> tuple[torch.Tensor, torch.Tensor]:
        with torch.inference_mode():
            packed = model.encode_image(x)
            with pytest.MonkeyPatch.context() as mp:
                _no_packing(mp)
                return packed, model.encode_image(x)

    first = packed_and_plain()
    with torch.no_grad():
        block.mlp.c_fc.weight.mul_(0.5)  # in place, as an optimiser step
    halved = packed_and_plain()
    model.load_state_dict(other.state_dict())  # copied in place
    loaded = packed_and_plain()
    block.attn.out_proj.weight.data = block.attn.out_proj.weight.data * 2  # replaced
    replaced = packed_and_plain()
    for packed, plain in (first, halved, loaded, replaced):
        assert torch.equal(packed, plain)
    assert not torch.equal(first[0], halved[0]) and not torch.equal(halved[0], loaded[0])
    assert not torch.equal(loaded[0], replaced[0])


@pytest.mark.parametrize("pretrained", [False, True])
def test_a_model_made_under_inference_mode_works_and_can_change(pretrained) -> None:
    """Users often wrap a whole script in torch.inference_mode(): the model is still built of
    ordinary tensors (inference tensors have no version counter, which the model's identity and
    the packed bf16 weights track changes by)."""
    x = torch.randn(2, 12, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        model = msclip.create_model("msclip-demo", pretrained=pretrained, precision="bf16")
        assert not any(p.is_inference() for p in model.parameters())
        before = model.encode_image(x)
        digest = model.checkpoint_sha256
    with torch.no_grad():
        model.clip.visual.transformer.resblocks[0].mlp.c_fc.weight.mul_(0.5)
    with torch.inference_mode():
        assert not torch.equal(model.encode_image(x), before)
    assert model.checkpoint_sha256 != digest or digest is None


def test_weights_converted_under_inference_mode_are_read_unpacked() -> None:
    """``model.to(...)`` under inference mode makes the weights inference tensors, which have no
    version counter: the bf16 path reads them as they are (the packed copies need one)."""
    from msclip import architecture

    x = torch.randn(2, 12, 64, 64, generator=torch.Generator().manual_seed(0))
    model = msclip.create_model("msclip-demo", pretrained=True, precision="fp32")
    with torch.inference_mode():
        model = model.bfloat16()
        weight = model.clip.visual.transformer.resblocks[0].mlp.c_fc.weight
        assert weight.is_inference()
        out = model.encode_image(x)
    assert id(weight) not in architecture._PACKED
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


@pytest.mark.parametrize(
    ("fault", "fp32_ok", "bf16_ok"),
    [("none", True, True), ("gelu-epilogue", True, False), ("product", False, False),
     ("raises", False, False)],
)  # fmt: skip
def test_fused_kernel_self_test_checks_the_products_each_dtype_runs(
    monkeypatch, caplog, fault: str, fp32_ok: bool, bf16_ok: bool
) -> None:
    """The gate of the fused CPU path tests oneDNN's linear kernel as the path calls it: the GELU
    epilogue only in bf16 (float32 runs GELU on its own), the plain product in both; a kernel
    that is off or missing turns the path off for that dtype, with the reason in the log."""
    import torch.nn.functional as F

    from msclip import architecture

    def kernel(x, w, b, attr, scalars, algorithm):
        if fault == "raises":
            raise RuntimeError("could not create a primitive descriptor")
        assert algorithm == ("none" if attr == "gelu" else "")  # the path's own arguments
        y = F.linear(x.float(), w.float(), b.float())
        if attr == "gelu":
            y = F.gelu(y) + (0.5 if fault == "gelu-epilogue" else 0.0)
        if fault == "product":
            y = y + 0.5  # beyond both tolerances (float32's 1e-4, bf16's 2 %)
        return y.to(x.dtype)

    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", kernel)
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: True)
    caplog.set_level(logging.INFO, logger="msclip.architecture")
    architecture._fused_mlp_works.cache_clear()
    try:
        assert architecture._fused_mlp_works(torch.float32) is fp32_ok
        assert architecture._fused_mlp_works(torch.bfloat16) is bf16_ok
    finally:
        architecture._fused_mlp_works.cache_clear()
    if fault != "none":
        assert "oneDNN's bfloat16 linear kernel" in caplog.text
