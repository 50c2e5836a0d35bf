"""Training a diffusers transformer's exits through the project's engine: the task that loads
the model, builds the adapted network and gives the engine its data. ``config.nnet``
(``name='diffusers'``):

    cls             'DiTTransformer2DModel' | 'PixArtTransformer2DModel'
    pretrained      a diffusers folder (read with ``local_files_only=True``); '' = build from
                    ``model_config`` (seeded by ``config.seed``)
    subfolder       the transformer's folder inside ``pretrained``
    model_config    the class's constructor arguments, without ``pretrained``
    train           'all' | 'heads' (model frozen) | 'exits' (blocks, final layer, heads)
    heads           a head file to start from ('' = fresh heads)
    time_shift      added to the network time (-1 for weights trained on 0-based indices)
    prompts         PixArt: prompt contexts file; prompt i is label i, plus the empty prompt
    vae             a latent model's autoencoder folder; '' = pixels
    img_size, in_chans, num_classes   the sample shape and label count

With ``config.loss.objective='distill'`` the training set is the model's own samples
(``libs/diffusers_exit/features.py``); otherwise ``config.dataset``."""
from __future__ import annotations

import copy
from pathlib import Path

import torch

from libs.diffusers_exit.adapter import ADAPTERS, attach_exits
from libs.diffusers_exit.features import SelfSamples
from libs.diffusers_exit.prompts import PromptTable
from libs.run.errors import UserError
from libs.tasks.pixel import PixelTask

TRAINED = ("all", "heads", "exits")
EXIT_PARTS = ("transformer_blocks", "proj_out", "proj_out_1", "proj_out_2", "scale_shift_table")  # train='exits'


def load_transformer(nnet, seed: int):
    """The diffusers transformer ``config.nnet`` names (module docstring), in eval mode."""
    import diffusers

    if nnet.cls not in ADAPTERS:
        raise UserError(f"config.nnet.cls={nnet.cls!r}: supported diffusers classes: {', '.join(ADAPTERS)}")
    cls = getattr(diffusers, nnet.cls)
    if nnet.get("pretrained"):
        path = Path(nnet.pretrained)
        if not path.is_dir():
            raise UserError(f"config.nnet.pretrained={nnet.pretrained!r} is not a folder: give a diffusers folder "
                            f"(save_pretrained's, or a snapshot under ~/.cache/huggingface/hub); nothing is downloaded")
        kw = dict(subfolder=nnet.subfolder) if nnet.get("subfolder") else {}
        return cls.from_pretrained(str(path), local_files_only=True, **kw).eval()
    if not nnet.get("model_config"):
        raise UserError("config.nnet needs a diffusers folder (config.nnet.pretrained, or --model) or the model's "
                        "constructor arguments (config.nnet.model_config)")
    torch.manual_seed(seed)
    return cls(**dict(nnet.model_config)).eval()


def check_nnet(nnet) -> list:
    """Every problem of a ``name='diffusers'`` ``config.nnet`` (one line each), loading nothing."""
    problems = []
    if nnet.get("cls") not in ADAPTERS:
        problems.append(f"config.nnet.cls={nnet.get('cls')!r}: choose one of {', '.join(ADAPTERS)}")
    if nnet.get("train", "all") not in TRAINED:
        problems.append(f"config.nnet.train={nnet.get('train')!r}: choose one of {', '.join(TRAINED)}")
    for field in ("img_size", "in_chans"):
        v = nnet.get(field)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            problems.append(f"config.nnet.{field}={v!r}: must be an integer >= 1")
    return problems


def _load_vae(folder: str):
    from diffusers import AutoencoderKL

    if not Path(folder).is_dir():
        raise UserError(f"config.nnet.vae={folder!r} is not a folder: give the pipeline's vae folder (local; "
                        f"nothing is downloaded)")
    return AutoencoderKL.from_pretrained(folder, local_files_only=True).eval().requires_grad_(False)


class DiffusersTask(PixelTask):
    """``PixelTask`` (labels, guidance, decoding) whose network is an adapted diffusers model."""

    def __init__(self, config, load_data: bool = True, transformer=None):
        nnet = config.nnet
        if nnet.get("train", "all") not in TRAINED:
            raise UserError(f"config.nnet.train={nnet.get('train')!r}: choose one of {', '.join(TRAINED)}")
        self.distill = config.loss.objective == "distill"
        super().__init__(config, load_data=load_data and not self.distill)
        self.config = config
        self.transformer = transformer if transformer is not None else load_transformer(nnet, config.seed)
        self.teacher = None
        if self.distill and nnet.get("train") == "exits":  # the frozen model as loaded
            self.teacher = attach_exits(copy.deepcopy(self.transformer), time_shift=nnet.get("time_shift", 0.0))
            self.teacher.requires_grad_(False).eval()
        self.prompts = PromptTable(nnet.prompts) if nnet.get("prompts") else None
        if nnet.cls == "PixArtTransformer2DModel" and (self.prompts is None or (load_data and not self.distill)):
            raise UserError("a PixArt model runs here on prompt contexts (config.nnet.prompts, made by "
                            "libs/diffusers_exit/prompts.py) and trains data-free only "
                            "(config.loss.objective='distill')")
        self.vae = _load_vae(nnet.vae) if nnet.get("vae") else None
        if self.distill and load_data:
            self.train_dataset = SelfSamples.load_or_make(self, config)

    # Prompts as labels (PixArt): the label machinery (balanced conditions, dropout to the null
    # label) picks rows of the prompt table.
    def make_batch(self, batch, device, generator=None):
        x, y = super().make_batch(batch, device, generator)
        return (x, self.prompts(y)) if self.prompts is not None else (x, y)

    def labels(self, indices, device):
        """Image i's label (PixArt: its prompt's row), what the self-sample file keeps."""
        return super().conditions(indices, device)

    def conditions(self, indices, device):
        y = self.labels(indices, device)
        return self.prompts(y) if self.prompts is not None and y is not None else y

    def null_condition(self, batch: int, device):
        if self.prompts is not None:
            raise UserError("classifier-free guidance of a PixArt model is not wired here (its conditions are not "
                            "one tensor): set config.sample.scale=0 and config.distill.scale=0")
        return super().null_condition(batch, device)

    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        if self.vae is None:
            return super().decode(x0)
        vae = self.vae.to(x0.device)
        images = vae.decode(x0.to(vae.dtype) / vae.config.scaling_factor).sample  # [-1, 1]
        return super().decode(images)

    @property
    def objective_kwargs(self) -> dict:
        """What the 'distill' objective needs beyond config.loss: the teacher's noise prediction."""
        if self.teacher is None:
            return {}
        teacher = self.teacher

        def target(x, t, cond):
            if next(teacher.parameters()).device != x.device:  # the engine moved the student; follow it
                teacher.to(x.device)
            return teacher.noise_prediction(teacher(x, t, cond))

        return {"teacher": target}

    def build_network(self):
        """The adapted network (the engine calls this instead of ``build_nnet``)."""
        nnet = self.config.nnet
        net = attach_exits(self.transformer, heads=nnet.get("heads") or None, time_shift=nnet.get("time_shift", 0.0))
        trained = nnet.get("train", "all")
        if trained == "heads":
            net.transformer.requires_grad_(False)
        elif trained == "exits":  # the blocks, the final layer and the heads; the embeddings stay
            net.transformer.requires_grad_(False)
            for name, param in net.transformer.named_parameters():
                if name.split(".")[0] in EXIT_PARTS:
                    param.requires_grad_(True)
        return net
