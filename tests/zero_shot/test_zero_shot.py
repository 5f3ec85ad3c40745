"""Zero-shot library: templates, class names, the published classifier recipe, the text cache."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from msclip import text_cache
from msclip.text_cache import TextEmbeddingCache, default_cache_dir, model_cache_key
from msclip.zero_shot import (
    DEFAULT_TEMPLATE_SET,
    ClassNameError,
    DuplicateClassError,
    TemplateError,
    UnknownTemplateSetError,
    build_classifier,
    check_class_names,
    encode_queries,
    format_prompts,
    list_template_sets,
    load_class_names,
    load_templates,
    normalize_class_name,
    zero_shot_probs,
)

PUBLISHED = Path(__file__).resolve().parents[3] / "shared" / "reference" / "templates"


@pytest.fixture(scope="module")
def tiny():
    import msclip

    torch.manual_seed(0)
    model = msclip.create_model("msclip-tiny")
    return model, msclip.get_tokenizer(model)


def _fail(*args, **kwargs):
    raise AssertionError("the text tower must not run: every prompt is cached")


# -- templates ----------------------------------------------------------------------------------
def test_shipped_template_sets():
    sets = list_template_sets()
    assert {"eo", "short", "sentinel2"} <= set(sets)
    assert DEFAULT_TEMPLATE_SET == "eo"
    eo = load_templates()
    assert 20 <= len(eo) <= 40
    for name in sets:
        templates = load_templates(name)
        assert templates and all("{c}" in t for t in templates)
        assert len(set(templates)) == len(templates), name


@pytest.mark.skipif(not PUBLISHED.is_dir(), reason="published template files not available")
def test_published_file_loads_verbatim_and_is_not_shipped():
    path = PUBLISHED / "msclip.txt"
    templates = load_templates(str(path))
    assert templates == path.read_text().splitlines()
    assert len(templates) == 50
    published = {t for f in PUBLISHED.glob("*.txt") for t in f.read_text().splitlines()}
    for name in list_template_sets():
        assert not published & set(load_templates(name)), f"set {name} copies published lines"


def test_template_errors(tmp_path):
    with pytest.raises(UnknownTemplateSetError, match=r"nope.*eo"):
        load_templates("nope")
    bad = tmp_path / "bad.txt"
    bad.write_text("a photo of {c}.\nno placeholder here\n")
    with pytest.raises(TemplateError, match="line 2"):
        load_templates(bad)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n# only a comment\n")
    with pytest.raises(TemplateError, match="no templates"):
        load_templates(empty)
    braces = tmp_path / "openai.txt"  # OpenAI CLIP's and open_clip's str.format templates
    braces.write_text("a satellite photo of {}.\n")
    with pytest.raises(
        TemplateError, match=r"write \{c\} for \{\} \('a satellite photo of \{c\}.'\)"
    ):
        load_templates(braces)


# -- class names --------------------------------------------------------------------------------
def test_normalize_class_name_is_the_published_rule():
    assert normalize_class_name("Annual_Crop") == "annual crop"
    assert normalize_class_name("River/Lake") == "river lake"
    assert normalize_class_name("Herbaceous_Vegetation") == "herbaceous vegetation"
    assert format_prompts("Sea_Lake", ["a {c}.", "{c}"]) == ["a sea lake.", "sea lake"]


def test_duplicate_and_empty_class_names():
    with pytest.raises(DuplicateClassError, match="'Forest' and 'forest'"):
        check_class_names(["Forest", "river", "forest"])
    with pytest.raises(DuplicateClassError):
        check_class_names(["sea_lake", "sea lake"])
    assert check_class_names(["sea_lake", "sea lake"], normalize=False) == ["sea_lake", "sea lake"]
    with pytest.raises(ClassNameError, match="no class names"):
        check_class_names([])


def test_load_class_names(tmp_path):
    txt = tmp_path / "c.txt"
    txt.write_text("Forest\n\n River \n")
    assert load_class_names(txt) == ["Forest", "River"]
    forms = ("- a\n- b_c\n", "classes: [a, b_c]\n", "1: b_c\n0: a\n", "names: {0: a, 1: b_c}\n")
    for text in forms:
        y = tmp_path / "c.yaml"
        y.write_text(text)
        assert load_class_names(y) == ["a", "b_c"], text
    y.write_text("classes: {x: [1, 2]}\n")
    with pytest.raises(ClassNameError, match="expected a list"):
        load_class_names(y)
    y.write_text("0: forest\n1: river\n0: sea\n")  # one label twice: a class would vanish
    with pytest.raises(ClassNameError, match="key 0 is given twice"):
        load_class_names(y)
    # comments, `label = name` lines (msclip's own lists) and a byte-order mark
    txt.write_bytes("\ufeff# my classes\nSeaLake = sea or lake\n\n# water\nforest\n".encode())
    assert load_class_names(txt) == ["sea or lake", "forest"]
    from msclip.eval.datasets import classnames_dir

    shipped = load_class_names(classnames_dir() / "eurosat.txt")
    assert len(shipped) == 10 and not any(n.startswith("#") or "=" in n for n in shipped)
    # a one-column CSV (quotes removed); a table of several columns is not a list of names
    csv = tmp_path / "c.csv"
    csv.write_text(
        '# mine, v2\r\nforest\r\n"Beaches, dunes, sands",\r\n\r\nSeaLake = sea or lake\r\n'
    )
    assert load_class_names(csv) == ["forest", "Beaches, dunes, sands", "sea or lake"]
    # a header naming the column is no class (Excel and pandas write one)
    for head in ("class", "Class Name", "label"):
        csv.write_text(f"{head}\nforest\nriver\n")
        assert load_class_names(csv) == ["forest", "river"], head
    csv.write_text("forest\nclass\n")  # only a first row can be the header
    assert load_class_names(csv) == ["forest", "class"]
    csv.write_text("id,name\n0,forest\n1,river\n")
    with pytest.raises(ClassNameError, match=r"c.csv, row 1: 'id,name' has 2 columns; .* one"):
        load_class_names(csv)
    y.write_text("[forest, yes]\n")  # YAML reads yes as true
    with pytest.raises(ClassNameError, match="quote it"):
        load_class_names(y)
    # names whose prompts the tokenizer makes the same: duplicates
    with pytest.raises(DuplicateClassError):
        check_class_names(["sea ice", "sea  ice"])
    with pytest.raises(DuplicateClassError):
        check_class_names(["prairies s\u00e8ches", "prairies se\u0300ches"])


def test_a_classes_file_entry_that_names_no_class_is_refused_where_it_is(tmp_path):
    """An empty entry became the class 'None' ({index: name}) or a refusal saying 'found list';
    a 'label =' line a refusal of 'positions [1]' without the file; names on lines without
    '- ' a refusal saying 'found str'."""
    y = tmp_path / "c.yaml"
    for text, said in [
        ("0: forest\n1:\n2: sea\n", "c.yaml: entry 1 is empty"),
        ("classes:\n  - forest\n  -\n  - sea\n", "c.yaml: item 2 is empty"),
        ("- forest\n- [a, b]\n", r"c.yaml: item 2 is a list \(\['a', 'b'\]\), not a class name"),
        ("forest\nriver\n", "c.yaml: YAML reads the file as the one text 'forest river'"),
    ]:  # fmt: skip
        y.write_text(text)
        with pytest.raises(ClassNameError, match=said):
            load_class_names(y)
    for name, text in [("c.txt", "forest\nSeaLake =\n"), ("c.csv", "forest\nSeaLake =\n")]:
        (tmp_path / name).write_text(text)
        with pytest.raises(ClassNameError, match=f"{name}: the line 'SeaLake =' names no class"):
            load_class_names(tmp_path / name)


# -- the classifier recipe ----------------------------------------------------------------------
def _reference_classifier(model, tokenizer, names, templates):
    """The published recipe, written plainly: full-length prompts, one class at a time."""
    rows = []
    with torch.no_grad():
        for name in names:
            clean = name.lower().replace("_", " ").replace("/", " ")
            emb = model.clip.encode_text(tokenizer([t.format(c=clean) for t in templates]))
            emb = emb / emb.norm(dim=-1, keepdim=True)
            mean = emb.mean(dim=0)
            rows.append(mean / mean.norm())
    return torch.stack(rows)


def test_build_classifier_matches_published_recipe(tiny):
    model, tokenizer = tiny
    names = ["Annual_Crop", "Forest", "River/Lake"]
    templates = load_templates("eo")
    w = build_classifier(model, tokenizer, names, templates, batch_size=16)
    ref = _reference_classifier(model, tokenizer, names, templates)
    assert w.shape == (3, model.embed_dim) and w.dtype == torch.float32
    torch.testing.assert_close(w, ref, atol=2e-6, rtol=0)

    img = torch.randn(5, model.embed_dim) * 3
    probs = zero_shot_probs(img, w)
    img_n = img / img.norm(dim=-1, keepdim=True)
    expected = torch.softmax(100.0 * img_n @ ref.T, dim=-1)
    torch.testing.assert_close(probs, expected, atol=1e-5, rtol=0)
    # one template given as a string: said so, not split into its characters
    with pytest.raises(TemplateError, match=r"got the single string 'a photo of \{c\}'"):
        build_classifier(model, tokenizer, names, "a photo of {c}")
    # open_clip's templates: functions, or str.format strings with {} (each said with its fix)
    with pytest.raises(TemplateError, match=r"got a function; .* pass \[t\('\{c\}'\) for t"):
        build_classifier(model, tokenizer, names, [lambda c: f"a photo of {c}."])
    with pytest.raises(TemplateError, match=r"write \{c\} for \{\} \('a photo of \{c\}.'\)"):
        build_classifier(model, tokenizer, names, ["a photo of {}."])
    lambdas = [lambda c: f"a photo of {c}.", lambda c: f"{c} from orbit"]
    torch.testing.assert_close(
        build_classifier(model, tokenizer, names, [t("{c}") for t in lambdas]),
        build_classifier(model, tokenizer, names, ["a photo of {c}.", "{c} from orbit"]),
    )


def test_cache_skips_text_tower(tiny, tmp_path, monkeypatch):
    model, tokenizer = tiny
    cache = TextEmbeddingCache.for_model(model, tmp_path)
    names, templates = ["forest", "sea_lake"], load_templates("short")
    w1 = build_classifier(model, tokenizer, names, templates, cache=cache)
    q1 = encode_queries(model, tokenizer, ["a river"], cache=cache)
    assert len(cache) == len(names) * len(templates) + 1

    monkeypatch.setattr(type(model), "encode_text", _fail)
    fresh = TextEmbeddingCache.for_model(model, tmp_path)  # a new process reads the shards
    w2 = build_classifier(model, tokenizer, names, templates, cache=fresh)
    q2 = encode_queries(model, tokenizer, ["a river"], cache=fresh)
    assert torch.equal(w1, w2) and torch.equal(q1, q2)
    # A new text misses the cache and reaches the (now failing) text tower.
    with pytest.raises(AssertionError, match="must not run"):
        encode_queries(model, tokenizer, ["a lake"], cache=fresh)


def test_cache_key_depends_on_weights_and_dtype(tiny, tmp_path):
    import msclip

    model, _ = tiny
    torch.manual_seed(1)
    other = msclip.create_model("msclip-tiny")
    assert model_cache_key(model) != model_cache_key(other)
    torch.manual_seed(0)
    same = msclip.create_model("msclip-tiny")
    assert model_cache_key(model) == model_cache_key(same)
    torch.manual_seed(0)
    bf16 = msclip.create_model("msclip-tiny", precision="bf16")
    assert model_cache_key(model) != model_cache_key(bf16)
    # another tokenizer (another cut) gives other embeddings: never served the model's own
    from msclip.tokenizer import CLIPTokenizer
    from msclip.zero_shot import build_classifier

    cache = TextEmbeddingCache.for_model(model, tmp_path)
    own_tok = msclip.get_tokenizer(model)
    names, templates = ["sea", "forest"], ["a satellite image of {c} seen from far above the land"]
    build_classifier(model, own_tok, names, templates, cache=cache)
    short = CLIPTokenizer(context_length=4)
    assert torch.equal(build_classifier(model, short, names, templates, cache=cache),
                       build_classifier(model, short, names, templates))  # fmt: skip
    # weights loaded into a model afterwards are other weights: another key
    tuned = msclip.create_model("msclip-tiny", precision="fp32")
    before = model_cache_key(tuned)
    sd = {k: v.clone() for k, v in tuned.clip.state_dict().items()}
    sd["text_projection"] += 0.1
    tuned.clip.load_state_dict(sd)
    assert model_cache_key(tuned) != before


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("MSCLIP_CACHE_DIR", str(tmp_path / "root"))
    assert default_cache_dir() == tmp_path / "root" / "text"
    monkeypatch.delenv("MSCLIP_CACHE_DIR")
    assert default_cache_dir() == Path("~/.cache/msclip/text").expanduser()


def test_cache_survives_corrupt_shard_and_compacts(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(text_cache, "MAX_SHARDS", 3)
    cache = TextEmbeddingCache("k", tmp_path)
    for i in range(5):
        cache.put([f"t{i}"], np.full((1, 4), i, np.float32))
    shards = list(cache.dir.glob("shard-*.npz"))
    assert len(shards) <= 3  # merged when above the limit
    (cache.dir / "shard-zzzz.npz").write_bytes(b"not a zip")  # e.g. written by a broken tool
    fresh = TextEmbeddingCache("k", tmp_path)
    with caplog.at_level(logging.WARNING):
        got = fresh.get_many([f"t{i}" for i in range(6)])
    assert sorted(got) == [f"t{i}" for i in range(5)]
    assert all(np.array_equal(got[f"t{i}"], np.full(4, i, np.float32)) for i in range(5))
    assert "ignoring the damaged text cache shard" in caplog.text
    assert not list(cache.dir.glob(".*"))  # no temporary files left behind

    # entries that are not finite are neither written nor served (they were served as NaN)
    cache.put(["nan", "fine"], np.array([[np.nan] * 4, [1.0] * 4], np.float32))
    assert sorted(TextEmbeddingCache("k", tmp_path).get_many(["nan", "fine"])) == ["fine"]
    np.savez(cache.dir / "shard-damaged.npz", keys=np.array(["x" * 64], dtype="<U64"),
             emb=np.full((1, 4), np.inf, np.float32))  # fmt: skip
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert len(TextEmbeddingCache("k", tmp_path)) == 6
    assert "non-finite entries" in caplog.text


def test_a_cache_folder_that_cannot_be_used_is_warned_about_once(tmp_path, monkeypatch, caplog):
    """A run's lookups and puts meet the same unusable folder again and again: one warning
    each for reading and writing, and the run goes on without the cache. Writing is said as
    msclip's other caches say it: once per process for the folder (each cache of the same root,
    one per model, said it again), naming the fix."""
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with caplog.at_level(logging.WARNING):
        for key in ("k", "other-model"):
            cache = TextEmbeddingCache(key, blocker)  # the root is a file: nothing is written
            for i in range(3):
                cache.put([f"t{i}"], np.ones((1, 4), np.float32))
    assert caplog.text.count("cannot keep prompt embeddings in") == 1
    assert "give a writable text cache folder" in caplog.text
    caplog.clear()

    def unlistable(self):
        raise PermissionError(13, "Permission denied", str(self))

    TextEmbeddingCache("k", tmp_path).put(["t"], np.ones((1, 4), np.float32))
    monkeypatch.setattr(Path, "iterdir", unlistable)
    cache = TextEmbeddingCache("k", tmp_path)
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            assert cache.get_many(["t"]) == {}
    assert caplog.text.count("cannot read") == 1


# -- decisions ------------------------------------------------------------------------------------
def test_classify_single_and_multi_label():
    from msclip.errors import ClassNameError, MetricInputError
    from msclip.zero_shot import classify, multilabel_predict, zero_shot_logits

    rng = np.random.default_rng(0)
    classifier = torch.nn.functional.normalize(torch.from_numpy(rng.normal(size=(4, 8))), dim=-1)
    feats = rng.normal(size=(6, 8)).astype(np.float32)
    names = ["sea", "forest", "city", "snow"]
    single = classify(feats, classifier, names)
    logits = zero_shot_logits(torch.from_numpy(feats), classifier).double().numpy()
    np.testing.assert_allclose(single.logits, logits)
    np.testing.assert_allclose(single.probs.sum(axis=1), 1.0)
    assert single.present is None
    assert single.labels() == [names[i] for i in logits.argmax(axis=1)]
    # the published multi-label rule runs on logits (100 x cosine)
    multi = classify(feats, classifier, names, multi_label="mean_others")
    np.testing.assert_array_equal(multi.present, multilabel_predict(logits, "mean_others"))
    assert multi.labels() == [
        ";".join(n for n, on in zip(names, row) if on) for row in multi.present
    ]
    # rows of equal scores: no class exceeds the mean of the others (float64 rounding said all)
    tied = np.full((3, 19), 6.40422650443282)
    tied[1] = 1e3 / 3
    tied[2, :] = [0.1] * 18 + [0.7]
    present = multilabel_predict(tied, "mean_others")
    assert not present[:2].any() and present[2].tolist() == [False] * 18 + [True]
    thr = classify(feats, classifier, names, multi_label="threshold", threshold=0.3)
    np.testing.assert_array_equal(thr.present, single.probs > 0.3)
    with pytest.raises(ClassNameError, match="at least two"):
        classify(feats, classifier[:1], names[:1], multi_label="mean_others")
    with pytest.raises(ClassNameError, match="3 class names"):
        classify(feats, classifier, names[:3])
    with pytest.raises(MetricInputError, match="unknown multi-label rule"):
        classify(feats, classifier, names, multi_label="top2")
    with pytest.raises(MetricInputError, match="threshold"):
        classify(feats, classifier, names, multi_label="threshold")
    # a threshold with another rule would be ignored without a word
    for rule in (None, "mean_others"):
        with pytest.raises(MetricInputError, match="applies to multi_label='threshold' only"):
            classify(feats, classifier, names, multi_label=rule, threshold=0.5)


def test_classify_takes_a_numpy_classifier_and_refuses_a_damaged_one():
    from msclip.errors import InvalidEmbeddingsError
    from msclip.zero_shot import classify

    rng = np.random.default_rng(1)
    classifier = torch.nn.functional.normalize(torch.from_numpy(rng.normal(size=(3, 8))), dim=-1)
    feats = rng.normal(size=(5, 8))
    names = ["sea", "forest", "city"]
    saved = classifier.numpy()  # as np.save / np.load gives it back
    np.testing.assert_allclose(
        classify(feats, saved, names).probs, classify(feats, classifier, names).probs
    )
    np.testing.assert_allclose(zero_shot_probs(feats, saved), zero_shot_probs(feats, classifier))
    damaged = saved.copy()
    damaged[1, 3] = np.nan  # every image would be "sea", status ok
    with pytest.raises(InvalidEmbeddingsError, match=r"\['forest'\] contain NaN"):
        classify(feats, damaged, names)


def test_texts_cut_at_the_context_length_are_named(tiny, caplog):
    from msclip.zero_shot import encode_texts

    model, tokenizer = tiny
    n = tokenizer.context_length
    fits = " ".join(["river"] * (n - 2))  # exactly fills the context with its markers
    long = " ".join(["lake"] * (n + 5))
    with caplog.at_level(logging.WARNING):
        encode_texts(model, tokenizer, ["a river", fits])
    assert "cut there" not in caplog.text
    with caplog.at_level(logging.WARNING):
        encode_texts(model, tokenizer, ["a river", long])
    assert f"1 text is longer than the text tower's {n} tokens" in caplog.text


def test_texts_cut_are_named_also_when_their_embeddings_come_from_the_cache(
    tiny, tmp_path, monkeypatch, caplog
):
    # docs/inference.md: texts longer than the context "are cut there, and the run names them";
    # a repeated run (the text cache on, the default) named none of them
    from msclip.zero_shot import encode_texts

    model, tokenizer = tiny
    n = tokenizer.context_length
    long = " ".join(["lake"] * (n + 5))
    cache = TextEmbeddingCache.for_model(model, tmp_path)
    first = encode_texts(model, tokenizer, ["a river", long], cache=cache)
    monkeypatch.setattr(type(model), "encode_text", _fail)
    tokenizer.release()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        again = encode_texts(model, tokenizer, [long, "a river"], cache=cache)
    assert torch.equal(again, first.flip(0))
    assert f"1 text is longer than the text tower's {n} tokens" in caplog.text
    assert "'lake lake" in caplog.text
    # short cached prompts are bounded without the merge tables (a cached run reads none)
    tokenizer.release()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        encode_texts(model, tokenizer, ["a river"], cache=cache)
    assert "cut there" not in caplog.text and tokenizer._tables is None


def test_max_tokens_bounds_the_token_count(tiny):
    _, tokenizer = tiny
    for text in ["a river", "Ünïcödé façade", "x" * 200, "&amp; <start_of_text> 12 34", "日本の川"]:
        assert len(tokenizer.encode(text)) <= tokenizer.max_tokens(text)


def test_prompt_batches_end_where_the_length_grows_on_a_cpu():
    from msclip.zero_shot import _MIN_BATCH_POSITIONS, _length_batches

    lengths = [7] * 60 + [8] * 70 + [9] * 3 + [12] * 200
    order = list(range(len(lengths)))
    batches = list(_length_batches(order, lengths, 256, cut_at_lengths=True))
    assert [i for b in batches for i in b] == order  # every prompt once, in order
    assert all(len(b) <= 256 for b in batches)
    # 60 x 7 = 420 positions: too few to end at 8 tokens; 130 x 8 >= 512: ends before 9
    assert [len(b) for b in batches] == [130, 203]
    assert 130 * 8 >= _MIN_BATCH_POSITIONS > 60 * 7
    # without the cut (a GPU), only the cap
    assert [len(b) for b in _length_batches(order, lengths, 256, cut_at_lengths=False)] == [256, 77]
    # the cap first: the second batch (30 x 8, then 3 x 9 tokens) is too short to end early
    capped = [len(b) for b in _length_batches(order, lengths, 100, cut_at_lengths=True)]
    assert capped == [100, 100, 100, 33]
    assert list(_length_batches([], [], 8, cut_at_lengths=True)) == []


def test_encode_texts_runs_fewer_padded_positions_with_the_same_embeddings(tiny, monkeypatch):
    """Prompts of many lengths: the CPU batches are trimmed nearer each prompt's own length, and
    the embeddings are those of one prompt at a time (to float rounding)."""
    from msclip.zero_shot import encode_texts

    model, tokenizer = tiny
    words = ["forest", "a river in the hills", "dense forest on a steep slope above a lake"]
    texts = [" ".join([words[i % 3]] * (1 + i % 4)) + f" {i}" for i in range(90)]
    positions = []
    real = type(model).encode_text

    def spy(self, tokens, *a, **k):
        positions.append(tokens.shape[0] * int(tokens.argmax(-1).max() + 1))
        return real(self, tokens, *a, **k)

    monkeypatch.setattr(type(model), "encode_text", spy)
    emb = encode_texts(model, tokenizer, texts, batch_size=256)
    lengths = (tokenizer(texts).argmax(-1) + 1).tolist()
    assert len(positions) > 1  # one call of 90 prompts before
    assert sum(positions) < len(texts) * max(lengths)
    monkeypatch.setattr(type(model), "encode_text", real)
    one = torch.cat([encode_texts(model, tokenizer, [t]) for t in texts])
    torch.testing.assert_close(emb, one, atol=2e-5, rtol=1e-5)


def test_class_names_that_are_not_text_are_refused_not_made_strings():
    from msclip.errors import ClassNameError
    from msclip.zero_shot import check_class_names

    with pytest.raises(ClassNameError, match=r"position 1 is None"):
        check_class_names(["forest", None])
    with pytest.raises(ClassNameError, match=r"position 0 is b'sea'.*name\.decode\(\)"):
        check_class_names([b"sea", b"forest"])
    assert check_class_names(np.array(["forest", "sea"])) == ["forest", "sea"]


def test_a_classifier_row_is_refused_not_scored_as_one_class():
    from msclip.errors import DimensionMismatchError
    from msclip.zero_shot import zero_shot_probs

    classifier = torch.nn.functional.normalize(torch.randn(2, 8), dim=-1)
    assert zero_shot_probs(torch.randn(3, 8), classifier[:1]).shape == (3, 1)
    with pytest.raises(DimensionMismatchError, match=r"\[C, D\] matrix.*shape \(8,\).*\[None\]"):
        zero_shot_probs(torch.randn(3, 8), classifier[0])


def test_a_scale_that_is_not_finite_and_positive_is_refused_not_made_nan():
    """OpenCLIP's habit passes model.logit_scale.exp(): of weights whose logit_scale is huge
    (1e6, infinity) that is infinite, and every probability was NaN without a word."""
    from msclip.errors import InvalidArgumentError
    from msclip.zero_shot import zero_shot_logits

    classifier = torch.nn.functional.normalize(torch.randn(2, 8), dim=-1)
    feats = torch.randn(3, 8)
    for bad in (torch.tensor(1e6).exp(), float("nan"), 0.0, -1.0, torch.ones(2)):
        with pytest.raises(InvalidArgumentError, match="scale must be a finite positive number"):
            zero_shot_probs(feats, classifier, scale=bad)
    # a finite scale, as a float or a tensor of one value, is used as given
    assert torch.allclose(zero_shot_logits(feats, classifier, torch.tensor(50.0)),
                          zero_shot_logits(feats, classifier) / 2)  # fmt: skip
