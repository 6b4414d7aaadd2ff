"""ONNX export of a generator, and running an exported one through ONNX Runtime.

Two graphs, as the generator's two halves run: `NAME.onnx` maps (lr, sentence,
prompts) to the SR image, with dynamic batch, height and width; `NAME.text.onnx`
maps CLIP token ids (B, L) (open_clip's tokenizer, context 77, cut after the
longest caption's end token) to (sentence, prompts).  The image graph's
metadata holds the model config and scale, so `--weights NAME.onnx` needs
nothing else.  Needs the `[onnx]` extra (onnx, onnxscript, onnxruntime).
"""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from clipsr_cli.errors import UserError
from clipsr_cli.io.files import atomic_write
from clipsr_cli.model.clip import CONTEXT_LENGTH
from clipsr_cli.model.config import ModelConfig
from clipsr_cli.plugins.protocols import TextCondition, TextFeatures

FORMAT = "clipsr-onnx"
OPSET = 18


class OnnxError(UserError, RuntimeError):
    pass


def text_graph_path(path: Path) -> Path:
    return path.with_name(path.stem + ".text.onnx")


class _ImageGraph(nn.Module):
    def __init__(self, gen):
        super().__init__()
        self.gen = gen

    def forward(self, lr, sentence, prompts):
        return self.gen(lr, TextCondition(sentence, prompts))


class _TextGraph(nn.Module):
    def __init__(self, gen):
        super().__init__()
        self.text = gen.text

    def forward(self, tokens):
        cond = self.text(TextFeatures(*self.text.tower(tokens)))
        return cond.sentence, cond.prompts


def _require(module: str):
    try:
        return __import__(module)
    except ImportError:
        raise OnnxError(f"ONNX needs the optional packages: pip install 'clipsr[onnx]' (missing {module})") from None


def export_onnx(gen, path: Path) -> tuple[Path, Path]:
    """Write the generator's image and text graphs; returns both paths."""
    _require("onnxscript")
    onnx = _require("onnx")
    gen = gen.float().eval().to(memory_format=torch.contiguous_format)
    if not hasattr(gen.text, "tower"):
        raise OnnxError(f"preset {gen.cfg.name!r}: only the CLIP text encoder is exported")
    with torch.no_grad():  # batch 2 and a non-square size: torch.export keeps none of them fixed
        cond = gen.encode_text(["a photo", "a bird on a branch"])
        tokens = gen.text.tower.tokenize(["a photo", "a bird on a branch"])
    m = gen.multiple * 3
    lr = torch.rand(2, 3, m, m + gen.multiple)
    batch, h, w = (torch.export.Dim(n, min=1 if n == "batch" else 4, max=8192) for n in ("batch", "h", "w"))
    path, text_path = Path(path), text_graph_path(Path(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    length = torch.export.Dim("length", min=2, max=CONTEXT_LENGTH)
    meta = {"format": FORMAT, "model_config": gen.cfg.to_json(), "scale": str(gen.scale),
            "text_graph": text_path.name, "causal_text": str(gen.clip.attn_mask is not None)}
    graphs = ((_ImageGraph(gen), (lr, cond.sentence, cond.prompts), path, ["lr", "sentence", "prompts"], ["sr"],
               {"lr": {0: batch, 2: h, 3: w}, "sentence": {0: batch}, "prompts": {0: batch}}, meta),
              (_TextGraph(gen), (tokens,), text_path, ["tokens"], ["sentence", "prompts"],
               {"tokens": {0: batch, 1: length}}, {"format": FORMAT + "-text"}))
    for module, args, target, inputs, outputs, dynamic, props in graphs:
        with tempfile.TemporaryDirectory() as work, warnings.catch_warnings(), \
                contextlib.redirect_stdout(io.StringIO()):  # the exporter's progress lines and notes
            warnings.simplefilter("ignore")
            raw = Path(work) / "graph.onnx"
            torch.onnx.export(module.eval(), args, str(raw), dynamo=True, opset_version=OPSET, input_names=inputs,
                              output_names=outputs, dynamic_shapes=dynamic, verbose=False, optimize=False)
            model = onnx.load(str(raw))  # weights gathered in: one self-contained file per graph
        for key, value in props.items():
            model.metadata_props.add(key=key, value=value)
        atomic_write(target, lambda tmp, model=model: onnx.save(model, str(tmp)))
    return path, text_path


class _OnnxText:
    """What the pipeline asks of a text stage, from the exported text graph."""

    def __init__(self, session, causal: bool):
        import open_clip

        self.session, self.causal = session, causal
        self.tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=CONTEXT_LENGTH)

    def n_tokens(self, caption: str) -> int:
        return len(self.tokenizer.encode(caption))

    def encode(self, captions: list[str]) -> TextCondition:
        tokens = self.tokenizer(captions)
        if self.causal:  # as TextTower.tokenize: nothing after the longest caption's end token
            tokens = tokens[:, : min(max(self.n_tokens(c) for c in captions) + 2, tokens.shape[1])]
        sentence, prompts = self.session.run(None, {"tokens": tokens.numpy()})
        return TextCondition(torch.from_numpy(sentence), torch.from_numpy(prompts))


class OnnxGenerator(nn.Module):
    """An exported generator run by ONNX Runtime's CPU provider, with the
    interface the pipeline uses (`scale`, `cfg`, `text`, `encode_text`, forward):
    tiling, batching, captions and outputs are the PyTorch path's own."""

    def __init__(self, path: Path, threads: int | None = None):
        super().__init__()
        ort = _require("onnxruntime")
        onnx = _require("onnx")
        path = Path(path)
        try:
            meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        except Exception as e:  # onnx raises its own kinds for a file that is not a model
            raise OnnxError(f"{path}: not a readable ONNX model ({e})") from None
        if meta.get("format") != FORMAT:
            raise OnnxError(f"{path}: not an ONNX model exported by clipsr (`clipsr export MODEL --onnx FILE`)")
        text_path = path.with_name(meta["text_graph"])
        if not text_path.is_file():
            raise OnnxError(f"{path}: its text graph {text_path} is missing; export both files together")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        # its threads sleep when idle instead of spinning: the pipeline's lanes share the cores
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3  # errors only: its constant-folding notes are not the user's concern
        providers = ["CPUExecutionProvider"]
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        self.text = _OnnxText(ort.InferenceSession(str(text_path), options, providers=providers),
                              meta["causal_text"] == "True")
        self.cfg = ModelConfig.from_dict(json.loads(meta["model_config"]), origin=f"{path}: model_config")
        self.scale = int(meta["scale"])
        self.path = path

    def encode_text(self, captions: list[str]) -> TextCondition:
        return self.text.encode(captions)

    def forward(self, lr: torch.Tensor, cond: TextCondition) -> torch.Tensor:
        feed = {"lr": lr.float().contiguous().cpu().numpy(), "sentence": cond.sentence.float().numpy(),
                "prompts": cond.prompts.float().numpy()}
        return torch.from_numpy(self.session.run(None, feed)[0])
