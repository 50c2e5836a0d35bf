"""Defaults shared by every config; each configs/<name>.py overrides what differs.

Field guide (flags that mirror fields: --workdir -> workdir, --pretrained_weight ->
train.pretrained_weight, --nnet_path -> nnet_path, --exit_threshold -> sample.exit_threshold,
--output_path -> output_path):
  nnet        network constructor arguments (name picks the class, see libs/nets.py)
  dataset     get_dataset(**dataset) arguments (libs/datasets.py)
  loss        objective 'adadiff' (released AdaDiff loss) or 'uvit' (plain U-ViT loss);
              uem_coef, layer_coef, layer_weight ('batch_normalized' released | 'per_sample' paper);
              p_uncond: label dropout for classifier-free guidance
  train       steps, batch size (global, over all processes), intervals, EMA rate, clipping
  sample      sampler and FID evaluation settings; exit_threshold: one value or a sweep
              '0.8,0.9,none' (1.0 / none = full depth)
"""
import ml_collections


def d(**kwargs):
    return ml_collections.ConfigDict(kwargs)


def base_config():
    config = ml_collections.ConfigDict()
    config.seed = 1234
    config.pred = "noise_pred"
    config.time = "continuous"  # 'continuous' (VP-SDE, t ~ U(0,1)) or 'discrete' (SD betas, n ~ U{1..1000})
    config.workdir = ""  # default: workdir/<config name>
    config.nnet_path = ""  # evaluation: weights to evaluate
    config.output_path = ""  # evaluation: report folder (default <workdir>/eval)
    config.loss = d(objective="adadiff", uem_coef=1.0, layer_coef=1.0, layer_weight="batch_normalized",
                    p_uncond=0.0)
    config.train = d(n_steps=200000, batch_size=512, pretrained_weight="", log_interval=10, sample_interval=5000,
                     eval_interval=0, save_interval=25000, keep_ckpts=0, num_workers=2, grad_clip=0.0,
                     ema_rate=0.9999, log_with="")
    config.optimizer = d(name="adamw", lr=4e-4, weight_decay=0.03, betas=(0.99, 0.999))
    config.lr_scheduler = d(name="customized", warmup_steps=2500)
    config.sample = d(algorithm="euler_maruyama_sde", sample_steps=1000, n_samples=50000, mini_batch_size=500,
                      scale=0.0, exit_threshold="1.0", path="", grid_size=64, fid_stat="")
    return config
