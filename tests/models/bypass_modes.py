"""Running a model or its base the ways the bypass tests compare (forward and the generate modes)."""
import torch


def run(model_or_base, mode, x, **audio):
    with torch.no_grad():
        if mode == "forward":
            return model_or_base(**x, **audio).logits
        gen = {k: v for k, v in x.items() if k != "decoder_input_ids"}
        kw = dict(max_new_tokens=4, min_new_tokens=4)
        if mode == "greedy":
            kw.update(do_sample=False)
        elif mode == "sample":
            kw.update(do_sample=True, top_k=0, temperature=1.0)
            torch.manual_seed(1234)
        elif mode == "beams":
            kw.update(do_sample=False, num_beams=3)
        elif mode == "num_return_sequences":
            kw.update(do_sample=False, num_beams=3, num_return_sequences=2)
        return model_or_base.generate(**gen, **kw, **audio)


def rows(out, mask, mode):
    per = 2 if mode == "num_return_sequences" else 1
    return out.view(mask.shape[0], per, *out.shape[1:])
