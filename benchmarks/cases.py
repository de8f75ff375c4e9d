"""What the benchmark runs: algorithm configurations and parameter layouts."""
import torch

# name -> (fusedopt / torch.optim class, options, number of state streams
# besides the gradient, param included: what a one-pass step reads and writes)
ALGORITHMS = {
    "sgd": ("SGD", dict(lr=0.01), 1),
    "sgd-momentum": ("SGD", dict(lr=0.01, momentum=0.9), 2),
    "sgd-nesterov": ("SGD", dict(lr=0.01, momentum=0.9, nesterov=True), 2),
    "adagrad": ("Adagrad", dict(lr=0.01), 2),
    "rmsprop": ("RMSprop", dict(lr=0.01), 2),
    "rmsprop-momentum": ("RMSprop", dict(lr=0.01, momentum=0.9), 3),
    "adam": ("Adam", dict(lr=1e-3), 3),
    "adamw": ("AdamW", dict(lr=1e-3), 3),
}

LAYOUTS = ("large", "small", "transformer")


def transformer_shapes(d_model=640, layers=8, vocab=8192):
    """About a hundred tensors of a GPT-like stack (embeddings, attention and
    MLP weights, biases, norms): tens of millions of parameters."""
    shapes = [(vocab, d_model), (1024, d_model)]
    for _ in range(layers):
        shapes += [(d_model,), (d_model,),                      # norm 1
                   (3 * d_model, d_model), (3 * d_model,),       # qkv
                   (d_model, d_model), (d_model,),               # attention out
                   (d_model,), (d_model,),                       # norm 2
                   (4 * d_model, d_model), (4 * d_model,),       # mlp in
                   (d_model, 4 * d_model), (d_model,)]           # mlp out
    return shapes + [(d_model,), (d_model,)]


def model_shapes(name):
    """The parameter shapes of a torch.nn model built here (no downloads)."""
    models = {
        "mlp": lambda: torch.nn.Sequential(torch.nn.Linear(1024, 4096), torch.nn.GELU(),
                                           torch.nn.Linear(4096, 4096), torch.nn.GELU(),
                                           torch.nn.Linear(4096, 1024)),
        "transformer": lambda: torch.nn.TransformerEncoder(
            torch.nn.TransformerEncoderLayer(512, 8, 2048, batch_first=True), num_layers=6,
            enable_nested_tensor=False),
        "convnet": lambda: torch.nn.Sequential(
            *[m for c_in, c_out in ((3, 64), (64, 128), (128, 256), (256, 512))
              for m in (torch.nn.Conv2d(c_in, c_out, 3, padding=1), torch.nn.BatchNorm2d(c_out), torch.nn.ReLU())],
            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(512, 10)),
    }
    if name not in models:
        raise ValueError(f"unknown model {name!r}; choose from {sorted(models)}")
    with torch.device("meta"):
        model = models[name]()
    return [tuple(p.shape) for p in model.parameters()]


def layout_shapes(layout, numel, small_count, small_size):
    if layout == "large":
        return [(numel,)]
    if layout == "small":
        return [(small_size,)] * small_count
    if layout == "transformer":
        return transformer_shapes()
    if layout.startswith("model:"):
        return model_shapes(layout.split(":", 1)[1])
    raise ValueError(f"unknown layout {layout!r}; choose from {LAYOUTS} or model:NAME")


def layout_label(layout, shapes):
    total = sum(torch.Size(s).numel() for s in shapes)
    return f"{layout} ({len(shapes)} tensors, {total / 1e6:.1f}M)"
