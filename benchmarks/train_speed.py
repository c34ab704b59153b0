"""Training speed of the DSP model against the same network without DSA and deep supervision, and of the input
pipeline with and without --cache-images; prints one JSON object.

    .venv/bin/python -m benchmarks.train_speed                      # GPU: resnet50, 384x128, batch 64, all variants
    .venv/bin/python -m benchmarks.train_speed --device cpu --batch-size 8 --steps 3 --warmup 1 --workers 2 \
        --pipeline-ids 16                                           # CPU: about 30 s on 2 idle cores

"dsp" is the full model; "plain" is the same ResNet with the same PCB head, built with dsa=False and
deep_supervision=False (the paper's baseline row). A step is one training iteration as in reid.trainer
(forward, DeepSupervisionLoss, backward, SGD step) on a fixed random batch. The models take turns step by step,
so a change in the machine's load (this CPU is shared) affects all of them alike, and the median step time is
reported; step_time_ratio is the DSP step time over the plain one (target: at most 1.15). dsa_seconds times
forward + backward through the three DSA blocks alone, on the feature maps of that batch (dsa_share_of_dsp_step:
its share of the DSP step), which resolves the blocks' cost more finely than the ratio of two noisy step times
on a shared CPU. The top-level figures are those of the first variant (fp32 unless --variants says otherwise);
"variants" holds them all.

On CUDA every variant is measured: fp32, amp (as main.py's --amp: bf16 autocast, or fp16 with a gradient
scaler on GPUs older than Ampere), amp + channels_last, and amp + channels_last + torch.compile; peak_mib is then
the CUDA memory a step of that model needs (its own tensors plus the step's peak, timed steps only). A variant
that fails reports its error instead of figures. On CPU only fp32, and the memory figures are the process's peak RSS.

The pipeline figures time reid.data.train_loader (the training loader of main.py: decoding, resizing, flips and
batching as uint8 in the workers; pinned memory on CUDA) over a generated synthetic dataset of 128x64 JPEG images,
as in Market-1501, without and with the in-memory cache. "loader" is the loader alone; "pipeline" adds
reid.data.to_model_input (the copy to the device, conversion to float and normalisation there), which on a GPU
costs the workers nothing and on the CPU runs in the training process. Each is one pass, after
--pipeline-epochs untimed ones.
"""
import argparse
import json
import resource
import statistics
import tempfile
import time

import torch

from reid import data, datasets, models
from reid.config import DataConfig, TrainConfig
from reid.datasets import synthetic
from reid.losses import DeepSupervisionLoss
from reid.trainer import apply_gradients, build_optimizer, mixed_precision

VARIANTS = {"fp32": dict(amp=False, channels_last=False, compile=False),
            "amp": dict(amp=True, channels_last=False, compile=False),
            "amp_channels_last": dict(amp=True, channels_last=True, compile=False),
            "amp_channels_last_compile": dict(amp=True, channels_last=True, compile=True)}
MODELS = {"dsp": dict(dsa=True, deep_supervision=True), "plain": dict(dsa=False, deep_supervision=False)}


def describe(error):
    return f"{type(error).__name__}: {str(error).strip()[:300]}"


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class TrainingRun:
    """One model in one variant, with its optimiser and a fixed batch; ``step()`` is one training iteration."""

    def __init__(self, model_options, variant, args, device):
        torch.manual_seed(0)
        self.device = device
        self.model = models.create(args.arch, args.classes, **model_options).to(device).train()
        self.images = torch.randn(args.batch_size, 3, args.height, args.width, device=device)
        self.targets = torch.randint(args.classes, (args.batch_size,), device=device)
        if variant["channels_last"]:
            self.model.to(memory_format=torch.channels_last)
            self.images = self.images.contiguous(memory_format=torch.channels_last)
        self.forward = torch.compile(self.model) if variant["compile"] else self.model
        self.criterion = DeepSupervisionLoss()
        self.optimizer = build_optimizer(self.model, TrainConfig(lr=0.01), pretrained=True)
        self.dtype, self.scaler = mixed_precision(device) if variant["amp"] else (None, None)
        self.seconds, self.peak_bytes, self.error = [], 0, None

    def step(self):
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            logits = self.forward(self.images)
        apply_gradients(self.criterion(logits, self.targets).total, self.optimizer, self.scaler)

    def resident_bytes(self):
        """Bytes this run keeps between steps: weights, buffers, optimiser state and the batch."""
        state = [value for entry in self.optimizer.state.values() for value in entry.values() if torch.is_tensor(value)]
        tensors = [*self.model.parameters(), *self.model.buffers(), *state, self.images, self.targets]
        return sum(tensor.numel() * tensor.element_size() for tensor in tensors)

    def timed_step(self, record):
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
            before = torch.cuda.memory_allocated(self.device)
        synchronize(self.device)
        started = time.perf_counter()
        self.step()
        synchronize(self.device)
        if not record:
            return
        self.seconds.append(time.perf_counter() - started)
        if cuda:
            step_peak = torch.cuda.max_memory_allocated(self.device) - before
            self.peak_bytes = max(self.peak_bytes, step_peak + self.resident_bytes())


def time_training(variant_names, args, device):
    """{variant: {model: run}} after ``args.warmup`` + ``args.steps`` steps each, taken in turns.

    A run that fails (torch.compile has failed on some PyTorch versions) keeps its error and stops; the others
    go on, so that one variant does not cost the figures of all.
    """
    runs = {name: {model: TrainingRun(options, VARIANTS[name], args, device) for model, options in MODELS.items()}
            for name in variant_names}
    for index in range(args.warmup + args.steps):
        for by_model in runs.values():
            for run in by_model.values():
                if run.error is not None:
                    continue
                try:
                    run.timed_step(record=index >= args.warmup)
                except Exception as error:
                    run.error = describe(error)
    return runs


def time_dsa_blocks(run, variant, args):
    """Median seconds of forward + backward through the DSP model's three DSA blocks alone, on the maps they get
    in this variant's training step (its dtype and memory format); compiled blocks in the compile variant."""
    maps = []
    hooks = [block.register_forward_pre_hook(lambda module, inputs: maps.append(inputs[0].detach()))
             for block in run.model.dsa]
    with torch.no_grad(), torch.autocast(run.device.type, dtype=run.dtype, enabled=run.dtype is not None):
        run.model(run.images)
    for hook in hooks:
        hook.remove()
    blocks = [torch.compile(block) if variant["compile"] else block for block in run.model.dsa]
    maps = [feature_map.requires_grad_() for feature_map in maps]
    grads = [torch.randn_like(feature_map) for feature_map in maps]
    seconds = []
    for index in range(args.warmup + args.steps):
        synchronize(run.device)
        started = time.perf_counter()
        for block, feature_map, grad in zip(blocks, maps, grads):
            block(feature_map).backward(grad)
        synchronize(run.device)
        if index >= args.warmup:
            seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


def training_figures(by_model, variant, args, device):
    errors = {model: run.error for model, run in by_model.items() if run.error is not None}
    if errors:
        return {f"{model}_error": error for model, error in errors.items()}
    seconds = {model: statistics.median(run.seconds) for model, run in by_model.items()}
    figures = {f"{model}_images_per_second": round(args.batch_size / seconds[model], 2) for model in MODELS}
    figures.update({f"{model}_step_seconds": round(seconds[model], 4) for model in MODELS})
    figures["step_time_ratio"] = round(seconds["dsp"] / seconds["plain"], 3)
    try:
        dsa_seconds = time_dsa_blocks(by_model["dsp"], variant, args)
    except Exception as error:
        figures["dsa_error"] = describe(error)
    else:
        figures["dsa_seconds"] = round(dsa_seconds, 4)
        figures["dsa_share_of_dsp_step"] = round(dsa_seconds / seconds["dsp"], 3)
    if device.type == "cuda":
        figures.update({f"{model}_peak_mib": round(run.peak_bytes / 2**20) for model, run in by_model.items()})
    return figures


def pipeline_speed(items, args, device, cache):
    """Images/s of the loader alone and of the loader followed by ``to_model_input``, the seconds to build the
    loader (the cache) and the cache's size in bytes.

    Each rate is that of one pass, after --pipeline-epochs untimed passes (the workers start in the first).
    The loader alone yields uint8 batches, as the workers make them; with ``to_model_input`` every batch ends
    on ``device`` as normalised float32 model input, as in training.
    """
    loader_config = DataConfig(batch_size=args.batch_size, height=args.height, width=args.width,
                               workers=args.workers, cache_images=cache)
    started = time.perf_counter()
    loader = data.train_loader(items, loader_config)
    build_seconds = time.perf_counter() - started

    def images_per_second(epoch, prepare):
        data.start_epoch(loader, epoch)
        started = time.perf_counter()
        images = sum(len(prepare(batch[0])) for batch in loader)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return images / (time.perf_counter() - started)

    for epoch in range(args.pipeline_epochs):
        images_per_second(epoch, lambda images: images)
    loader_rate = images_per_second(args.pipeline_epochs, lambda images: images)
    pipeline_rate = images_per_second(args.pipeline_epochs + 1, lambda images: data.to_model_input(images, device))
    cached = loader.dataset.cached or []
    return loader_rate, pipeline_rate, build_seconds, sum(image.numel() for image in cached)


def time_pipeline(items, args, device):
    loader_rate, pipeline_rate, _, _ = pipeline_speed(items, args, device, cache=False)
    cached_loader_rate, cached_pipeline_rate, build_seconds, cache_bytes = pipeline_speed(items, args, device,
                                                                                          cache=True)
    return {"pipeline_images": len(items), "workers": args.workers,
            "loader_images_per_second": round(loader_rate, 1),
            "pipeline_images_per_second": round(pipeline_rate, 1),
            "cached_loader_images_per_second": round(cached_loader_rate, 1),
            "cached_pipeline_images_per_second": round(cached_pipeline_rate, 1),
            "cache_build_seconds": round(build_seconds, 2), "cache_mib": round(cache_bytes / 2**20, 1)}


def peak_rss_mib():
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-a", "--arch", default="resnet50", choices=models.names())
    parser.add_argument("--height", type=int, default=384)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("-b", "--batch-size", type=int, default=64)
    parser.add_argument("--classes", type=int, default=751, help="identities (Market-1501 has 751)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per model and variant")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation, cuDNN tuning)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=None,
                        help="default: every variant on CUDA, fp32 on CPU")
    parser.add_argument("-j", "--workers", type=int, default=4, help="loader worker processes")
    parser.add_argument("--pipeline-ids", type=int, default=100,
                        help="identities of the generated dataset (about 21 images each)")
    parser.add_argument("--pipeline-epochs", type=int, default=1,
                        help="untimed passes over the dataset before the timed ones")
    return parser


def main(argv=None):
    parser = get_args_parser()
    args = parser.parse_args(argv)
    if min(args.steps, args.batch_size, args.pipeline_ids) < 1 or min(args.warmup, args.pipeline_epochs) < 0:
        parser.error("--steps, --batch-size and --pipeline-ids must be at least 1, --warmup and --pipeline-epochs "
                     "at least 0")
    device = torch.device(args.device)
    variants = args.variants or (list(VARIANTS) if device.type == "cuda" else ["fp32"])
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    elif any(VARIANTS[name] != VARIANTS["fp32"] for name in variants):
        parser.error("the amp, channels_last and compile variants are measured on CUDA only")
    with tempfile.TemporaryDirectory() as folder:
        synthetic.generate(f"{folder}/synthetic", num_train_ids=args.pipeline_ids, num_test_ids=1)
        items = datasets.create("synthetic", f"{folder}/synthetic", combine_trainval=True, verbose=False).train
        if len(items) < args.batch_size:
            parser.error(f"--pipeline-ids {args.pipeline_ids} gives {len(items)} images, fewer than a batch")
        runs = time_training(variants, args, device)
        by_variant = {name: training_figures(by_model, VARIANTS[name], args, device)
                      for name, by_model in runs.items()}
        del runs
        result = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                  "torch": torch.__version__, "threads": torch.get_num_threads(), "arch": args.arch,
                  "height": args.height, "width": args.width, "batch_size": args.batch_size, "steps": args.steps,
                  "warmup": args.warmup, "variant": variants[0], **by_variant[variants[0]], "variants": by_variant,
                  "training_peak_rss_mib": peak_rss_mib()}
        result.update(time_pipeline(items, args, device))
    result["peak_rss_mib"] = peak_rss_mib()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
