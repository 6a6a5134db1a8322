"""SAFEProcessor: the same inputs the training code makes, save_pretrained -> from_pretrained round trips
(built-in models, tiny LLaVA / BLIP-2 checkpoints with their own processors), mixed batches, numpy
features, and the same answer for one clip in every form a user may have it."""
import json

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch

from safe import bench as synth
from safe.inference.loading import load_frozen
from safe.inference.pipeline import pipeline
from safe.processing.audio import AudioInputError, read_wav
from safe.processing.features import audio_preview
from safe.processing.processor import PROCESSOR_FILE, SAFEProcessor


def _equal(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def examples(trained_run):
    bench, _, _ = trained_run
    test = synth.load_split(bench, "test")
    return [e for e in test if e.needs_audio][:6], [e for e in test if not e.needs_audio][:4]


def test_builtin_processor_matches_training_inputs_and_round_trips(trained_run, examples, tmp_path):
    bench, base, run = trained_run
    audio_ex, vl_ex = examples
    rows = audio_ex[:2] + vl_ex[:2]
    proc = SAFEProcessor.from_pretrained(run / "checkpoints" / "final")
    meta = json.loads((run / "checkpoints" / "final" / PROCESSOR_FILE).read_text())
    assert meta["kind"] == "builtin" and meta["sources"]["base"] == str(base.resolve()) and meta["max_seconds"] == 1.0
    inputs = proc(text=[e.question for e in rows], images=[e.image for e in rows],
                  audio=[rows[0].audio, rows[1].audio, None, None])
    # what the training / evaluation code builds from the same records
    _, _, fmt, frontend = load_frozen(base)
    enc = fmt.encode(rows)
    want = fmt.prompt_batch(enc, range(len(rows)))
    assert torch.equal(inputs["input_ids"], want["input_ids"])
    assert torch.equal(inputs["attention_mask"], want["attention_mask"])
    assert torch.equal(inputs["pixel_values"], fmt.pixels([e.image for e in rows]))
    wav = [read_wav(e.audio)[0] for e in rows[:2]]
    assert torch.equal(inputs["audio_features"][:2], frontend(wav))
    assert not inputs["audio_features"][2:].any()
    assert inputs["audio_mask"].tolist() == [True, True, False, False]
    assert torch.equal(inputs["audio_preview"][:2], audio_preview(wav))
    _equal(SAFEProcessor.from_pretrained(run)(  # a run directory finds its checkpoint's processor
        text=[e.question for e in rows], images=[e.image for e in rows], audio=[rows[0].audio, rows[1].audio, None, None]),
        inputs)
    proc.save_pretrained(tmp_path / "copy")
    _equal(SAFEProcessor.from_pretrained(tmp_path / "copy")(
        text=[e.question for e in rows], images=[e.image for e in rows], audio=[rows[0].audio, rows[1].audio, None, None]),
        inputs)


@pytest.mark.parametrize("base_kind,audio_kind", [("llava", "whisper"), ("blip2-opt", "clap"), ("blip2-t5", "whisper")])
def test_checkpoint_processors_round_trip(tiny_builtin, examples, tmp_path, base_kind, audio_kind):
    from tests.training.test_stage_a_checkpoints import _save_audio, _save_base

    bench, _ = tiny_builtin
    base = _save_base(base_kind, bench, tmp_path / "base")
    audio = _save_audio(audio_kind, tmp_path / "audio")
    vl, _, fmt, frontend = load_frozen(base, audio)
    proc = SAFEProcessor.from_components(fmt, frontend, vl, base=base, audio=audio)
    rows = examples[0][:2] + examples[1][:1]
    call = dict(text=[e.question for e in rows], images=[e.image for e in rows], audio=[rows[0].audio, None, rows[2].audio])
    inputs = proc(**call)
    assert torch.equal(inputs["input_ids"], fmt.prompt_batch(fmt.encode(rows), range(3))["input_ids"])
    assert torch.equal(inputs["pixel_values"], fmt.pixels([e.image for e in rows]))
    assert (inputs["input_ids"] == proc.image_token_id).sum(1).tolist() == [fmt.n_image] * 3
    proc.save_pretrained(tmp_path / "ckpt")
    again = SAFEProcessor.from_pretrained(tmp_path / "ckpt")
    assert again.kind == "checkpoint" and again.prompt_format.template == fmt.template
    assert again.sources == {"base": str(base.resolve()), "audio": str(audio.resolve())}
    _equal(again(**call), inputs)
    if base_kind.startswith("blip2"):
        with pytest.raises(ValueError, match="BLIP-2 model needs an image on every row"):
            again(text=call["text"][:1], audio=call["audio"][:1])


def test_mixed_batches_and_bad_rows(trained_run, examples):
    _, _, run = trained_run
    proc = SAFEProcessor.from_pretrained(run / "checkpoints" / "final")
    audio_ex, vl_ex = examples
    q = [audio_ex[0].question, vl_ex[0].question]
    text_only = proc(text=q, audio=[audio_ex[0].audio, None])
    assert "pixel_values" not in text_only and not (text_only["input_ids"] == proc.image_token_id).any()
    assert text_only["audio_mask"].tolist() == [True, False]
    none = proc(text=q, images=[audio_ex[0].image, vl_ex[0].image])
    assert none["audio_mask"].tolist() == [False, False] and "audio_features" not in none
    mixed = proc(text=q, images=[audio_ex[0].image, None])  # row 1 gets the black stand-in image
    from PIL import Image

    from safe.processing.processor import STAND_IN_RGB

    blank = Image.new("RGB", Image.open(audio_ex[0].image).size, STAND_IN_RGB)
    assert torch.equal(mixed["pixel_values"], proc(text=q, images=[audio_ex[0].image, blank])["pixel_values"])
    assert (mixed["input_ids"] == proc.image_token_id).any(1).tolist() == [True, True]
    with pytest.raises(AudioInputError, match=r"audio\[1\].*sampling_rate"):
        proc(text=q, audio=[audio_ex[0].audio, np.zeros(100, np.float32)])
    with pytest.raises(AudioInputError, match=r"audio\[0\]: all samples are NaN"):
        proc(text=q[:1], audio=np.full(100, np.nan, np.float32), sampling_rate=16000)
    with pytest.raises(ValueError, match="2 given for 1 questions"):
        proc(text=q[:1], audio=[None, None])


def test_numpy_features_reach_the_encoder(trained_run, examples):
    p = pipeline(trained_run[2])
    proc, model = p.processor, p.model
    rows = examples[0][:2]
    inputs = proc(text=[e.question for e in rows], images=[e.image for e in rows], audio=[e.audio for e in rows])
    feats = inputs.pop("audio_features")
    inputs.pop("audio_preview")
    want = model(**inputs, audio_features=feats).logits
    assert torch.equal(model(**inputs, audio_features=feats.numpy()).logits, want)
    assert torch.equal(model.audio_encoder.encode(feats.numpy()), model.audio_encoder.encode(feats))
    with pytest.raises(TypeError, match="input_features must be a tensor or numeric array"):
        model.audio_encoder.encode("clip.wav")


def test_every_form_of_a_clip_gives_the_same_answer(trained_run, examples, tmp_path):
    """44.1 kHz stereo int16, 48 kHz float32, 24-bit WAV, FLAC, int16 at 16 kHz: after decoding, downmix and
    resampling the trained model answers as for the 16 kHz mono float original."""
    p = pipeline(trained_run[2])
    rows = examples[0]
    q, imgs = [e.question for e in rows], [e.image for e in rows]
    original = [read_wav(e.audio)[0] for e in rows]
    want = p(image=imgs, question=q, audio=original, use_audio=True, sampling_rate=16000)
    base = p(image=imgs, question=q, use_audio=False)
    forms = {
        "44.1 kHz stereo int16": ([np.round(np.stack([r, r], 1) * 32767).astype(np.int16)
                                   for r in (soxr.resample(x, 16000, 44100) for x in original)], 44100),
        "48 kHz float32": ([soxr.resample(x, 16000, 48000).astype(np.float32) for x in original], 48000),
        "16 kHz int16": ([np.round(x * 32767).astype(np.int16) for x in original], 16000),
    }
    for kind, subtype in (("wav", "PCM_24"), ("flac", "PCM_16")):
        paths = []
        for i, x in enumerate(original):
            paths.append(tmp_path / f"{i}.{kind}")
            sf.write(str(paths[-1]), x, 16000, subtype=subtype)
        forms[f"{kind} {subtype}"] = (paths, None)

    def logits(clips, rate):
        inputs = p.processor(text=q, images=imgs, audio=clips, sampling_rate=rate)
        inputs.pop("audio_preview", None)
        return p.model(**inputs).logits

    with torch.no_grad():
        ref = logits(original, 16000)
        effect = (ref - logits([None] * len(rows), None)).abs().max()  # how far audio moves this model
        assert effect > 0.05
        # negative control: mis-scaled floats (x1000, the largest peak accepted) move the logits 5x more than
        # any form below may; int16 values passed as floats (the old bug) are refused for their peak
        assert (logits([x * 1000 for x in original], 16000) - ref).abs().max() > 0.05 * effect
        with pytest.raises(AudioInputError, match="peak"):
            logits([x * 32767 for x in original], 16000)
        for name, (clips, rate) in forms.items():
            assert (logits(clips, rate) - ref).abs().max() < 0.01 * effect, name
            got = p(image=imgs, question=q, audio=clips, use_audio=True, sampling_rate=rate)
            assert [g["answer"] for g in got] == [w["answer"] for w in want], name
            assert all(g["used_audio"] for g in got)
    # the audio path is really taken: the features differ from "no audio" for these rows
    assert [w["used_audio"] for w in want] == [True] * len(rows) and not any(b["used_audio"] for b in base)


LLAVA_CHAT = ("{% for m in messages %}{{ m['role'].upper() + ': ' }}{% for c in m['content'] %}"
              "{% if c['type'] == 'image' %}{{ '<image>\n' }}{% else %}{{ c['text'] + ' ' }}{% endif %}{% endfor %}"
              "{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}")
OTHER_CHAT = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{% for c in m['content'] %}"
              "{% if c['type'] == 'image' %}<image>{% else %}{{ c['text'] }}{% endif %}{% endfor %}<|end|>{% endfor %}"
              "{% if add_generation_prompt %}<|assistant|>{% endif %}")


@pytest.mark.parametrize("chat, template", [
    (LLAVA_CHAT, "USER: <image>\n{question} ASSISTANT:"),                   # LLaVA-1.5's own layout
    (OTHER_CHAT, "<|user|><image>{question}<|end|><|assistant|>"),          # BOS text dropped: the format adds its id
    (None, "USER: <image>\n{question} ASSISTANT:"),                         # no chat template: the default
])
def test_prompts_follow_the_checkpoints_chat_template(chat, template):
    """A checkpoint with a chat template gets its prompts from it (issue 15); an explicit template wins."""
    from safe.processing.hf_prompts import ProcessorFormat
    from safe.processing.prompts import build_tokenizer, words_of

    tok = build_tokenizer(words_of(["what colour is the square", "user assistant end"]))
    tok.chat_template = chat
    layout = {"arch": "llava", "image_token_id": tok.convert_tokens_to_ids("<image>"), "num_image_tokens": 3,
              "encoder_decoder": False, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id,
              "decoder_start_token_id": None}
    fmt = ProcessorFormat.from_parts(tok, object(), layout)  # the image processor is not used here
    assert fmt.template == template
    ids = fmt.encode([type("Row", (), {"question": "what colour", "answer": "red"})()]).prompts[0]
    assert ids.count(layout["image_token_id"]) == 3 and ids.count(tok.bos_token_id) <= 1  # never a second BOS
    assert ProcessorFormat.from_parts(tok, object(), layout, template="Q: {question} <image>").template == "Q: {question} <image>"
