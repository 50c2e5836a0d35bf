"""MS-COCO 256x256 text-to-image in SD latent space (4x32x32), U-ViT-S/2 on CLIP ViT-L/14 token
embeddings, discrete time (train_t2i_discrete.py / eval_t2i_discrete.py / sample_t2i_discrete.py)."""
from configs.common import base_config, d


def get_config():
    config = base_config()
    config.time = "discrete"
    config.nnet = d(name="uvit_t2i", img_size=32, patch_size=2, in_chans=4, embed_dim=512, depth=12, num_heads=8,
                    mlp_ratio=4, qkv_bias=False, mlp_time_embed=False, clip_dim=768, num_clip_token=77,
                    use_checkpoint=False, conv=True, skip=True, uem_time_aware=False)
    config.dataset = d(name="mscoco256_features", path="assets/datasets/coco256_features")
    config.autoencoder = d(pretrained_path="assets/stable-diffusion/autoencoder_kl.pth", scale_factor=0.23010, config="")
    config.clip = d(version="openai/clip-vit-large-patch14")
    config.loss.p_uncond = 0.1
    config.train.update(n_steps=1000000, batch_size=256, save_interval=10000, sample_interval=10000)
    config.optimizer.update(lr=2e-4, betas=(0.9, 0.9))
    config.lr_scheduler.warmup_steps = 5000
    config.sample.update(algorithm="dpm_solver_pp", sample_steps=50, n_samples=50000, mini_batch_size=50, scale=1.0,
                         exit_policy="0.87", decode_chunk=25, fid_stat="assets/fid_stats/fid_stats_mscoco256_val.npz")
    return config
