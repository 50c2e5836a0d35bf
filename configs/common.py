"""Defaults shared by every config; each configs/<name>.py overrides what differs.

Field guide (flags that mirror fields: --workdir -> workdir, --pretrained_weight ->
train.pretrained_weight, --nnet_path -> nnet_path, --exit_policy / --exit_threshold -> sample.exit_policy,
--output_path -> output_path):
  nnet        network constructor arguments (name picks the class, see libs/models/registry.py)
  dataset     get_dataset(**dataset) arguments (libs/data/registry.py)
  loss        objective 'adadiff' (released AdaDiff loss) or 'uvit' (plain U-ViT loss);
              uem_coef, layer_coef, layer_weight ('batch_normalized' released | 'per_sample' paper);
              p_uncond: label dropout for classifier-free guidance
  train       steps, batch size (global, over all processes), intervals, EMA rate, clipping;
              select_best_by_fid: FID of every saved checkpoint (full depth, select_best_n_samples
              images) and at the end the best one (ckpts/best.json; libs/training/best_checkpoint.py);
              max_abs_weight: a weight (or EMA weight) larger than this in magnitude, or NaN/inf,
              means the run diverged: it stops before saving (0 = only NaN/inf)
  sample      sampler and FID evaluation settings; exit_policy: one policy or a sweep
              '0.8,0.9,static:5,profile:0.9,budget:0.7,full' (libs/exits/policy.py; a bare number is
              a threshold, 1.0 / none / full = full depth); calib_samples: images that profile:
              and budget: policies calibrate on; conditions: 'balanced' (label i mod K, caption 0
              of val image i) or 'random' (released: random labels, a random caption of a shuffled
              val image), both fixed per image by config.seed; compile: 'none' (eager) | 'blocks'
              (compiled blocks and heads, every exit rule) | 'graphs' (whole-call graphs for static
              schedules, the rest as blocks), for evaluation and training-time grids
              (libs/models/compile.py; compile time is reported apart from sampling time);
              save_features: write each pair's Inception features to <output>/features/<pair>.npy
              (float32, one row per image in image order; tools/fid.py reads them)
"""
import ml_collections


def STEP_COUNTS(default):  # noqa: N802
    """sample_steps takes one count (50) or a comma-separated sweep (10,15,20,50): any literal type."""
    return ml_collections.FieldReference(default, field_type=object)


def d(**kwargs):
    return ml_collections.ConfigDict(kwargs)


def base_config():
    config = ml_collections.ConfigDict()
    config.seed = 1234
    config.time = "continuous"  # 'continuous' (VP-SDE, t ~ U(0,1)) or 'discrete' (SD betas, n ~ U{1..1000})
    config.workdir = ""  # default: workdir/<config name>
    config.nnet_path = ""  # evaluation: weights to evaluate
    config.output_path = ""  # evaluation: report folder (default <workdir>/eval)
    config.inception_path = ""  # FID: Inception weights file (default: found offline, see docs/compute_and_fid.md)
    config.loss = d(objective="adadiff", uem_coef=1.0, layer_coef=1.0, layer_weight="batch_normalized",
                    p_uncond=0.0)
    config.train = d(n_steps=200000, batch_size=512, pretrained_weight="", log_interval=10, sample_interval=5000,
                     eval_interval=0, save_interval=25000, keep_ckpts=0, num_workers=2, grad_clip=0.0,
                     ema_rate=0.9999, log_with="", select_best_by_fid=False, select_best_n_samples=10000,
                     max_abs_weight=1e4)
    config.optimizer = d(name="adamw", lr=4e-4, weight_decay=0.03, betas=(0.99, 0.999))
    config.lr_scheduler = d(name="customized", warmup_steps=2500)
    config.sample = d(algorithm="euler_maruyama_sde", sample_steps=STEP_COUNTS(1000), n_samples=50000, mini_batch_size=500,
                      scale=0.0, exit_policy="full", calib_samples=64, path="", grid_size=64, fid_stat="",
                      conditions="balanced", compile="none", save_features=False)
    return config


# U-ViT sizes: embed_dim, depth, num_heads, conv.
UVIT_SIZES = {"small": (512, 12, 8, True), "mid": (768, 16, 12, True), "large": (1024, 20, 16, True),
              "huge": (1152, 28, 16, False)}


def uvit_nnet(size, img_size, patch_size, in_chans, num_classes, use_checkpoint=True, **extra):
    D, depth, heads, conv = UVIT_SIZES[size]
    return d(name="uvit", img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=D, depth=depth,
             num_heads=heads, mlp_ratio=4, qkv_bias=False, mlp_time_embed=False, num_classes=num_classes,
             use_checkpoint=use_checkpoint, conv=conv, skip=True, uem_time_aware=False, **extra)


def imagenet_latent_config(resolution, size):
    """ImageNet 256 / 512 in SD latent space (4 x res/8 x res/8), class-conditional with
    classifier-free guidance. Large: continuous time (train_ldm.py), huge: discrete
    (train_ldm_discrete.py); guidance scale 0.4 at 256, 0.7 at 512; released threshold 0.92."""
    config = base_config()
    config.time = "discrete" if size == "huge" else "continuous"
    latent = resolution // 8
    config.nnet = uvit_nnet(size, img_size=latent, patch_size=2 if resolution == 256 else 4, in_chans=4,
                            num_classes=1001)
    config.dataset = d(name=f"imagenet{resolution}_features", path=f"assets/datasets/imagenet{resolution}_features",
                       num_classes=1000)
    # The released huge configs decode with the EMA weights of the SD autoencoder.
    vae = "autoencoder_kl_ema.pth" if size == "huge" else "autoencoder_kl.pth"
    config.autoencoder = d(pretrained_path=f"assets/stable-diffusion/{vae}", scale_factor=0.18215, config="")
    config.loss.p_uncond = 0.1 if size == "huge" else 0.15
    # Released training lengths: 300k steps for ImageNet 256 large, 500k for the others.
    n_steps = 300000 if (resolution, size) == (256, "large") else 500000
    config.train.update(n_steps=n_steps, batch_size=1024, save_interval=10000, sample_interval=10000)
    config.optimizer.update(lr=2e-4, betas=(0.99, 0.99))
    config.lr_scheduler.warmup_steps = 5000
    config.sample.update(algorithm="dpm_solver_pp" if size == "huge" else "dpm_solver", sample_steps=50,
                         n_samples=50000, mini_batch_size=50, scale=0.4 if resolution == 256 else 0.7,
                         exit_policy="0.92", decode_chunk=25,
                         fid_stat=f"assets/fid_stats/fid_stats_imagenet{resolution}_guided_diffusion.npz")
    return config


def imagenet64_config(size):
    """ImageNet 64x64 pixels, class-conditional, continuous time (U-ViT values)."""
    config = base_config()
    config.nnet = uvit_nnet(size, img_size=64, patch_size=4, in_chans=3, num_classes=1000)
    config.dataset = d(name="imagenet64", path="assets/datasets/imagenet", resolution=64, random_flip=True)
    config.train.update(n_steps=300000, batch_size=1024, save_interval=25000, sample_interval=10000)
    config.optimizer.update(lr=3e-4, betas=(0.99, 0.99))
    config.lr_scheduler.warmup_steps = 5000
    config.sample.update(algorithm="dpm_solver", sample_steps=50, n_samples=50000, mini_batch_size=200,
                         exit_policy="0.92", fid_stat="assets/fid_stats/fid_stats_imagenet64_guided_diffusion.npz")
    return config
