"""Diffusion math (pure JAX, no Flax): schedules, parametrisations, loss, DDIM, guidance, sampling."""

from videoldm.diffusion.ddim import ddim_sample
from videoldm.diffusion.ddim import ddim_step
from videoldm.diffusion.ddim import ddim_timesteps
from videoldm.diffusion.ddim import ddim_variance_noise
from videoldm.diffusion.ddim import make_ddim_sampler
from videoldm.diffusion.guidance import combine_guided
from videoldm.diffusion.guidance import make_guided_denoiser
from videoldm.diffusion.losses import diffusion_loss
from videoldm.diffusion.losses import loss_weight
from videoldm.diffusion.parametrization import canonical_prediction_type
from videoldm.diffusion.parametrization import convert_prediction
from videoldm.diffusion.parametrization import training_target
from videoldm.diffusion.parametrization import x0_and_eps
from videoldm.diffusion.schedules import Schedule
from videoldm.diffusion.schedules import expand_to
from videoldm.diffusion.schedules import make_schedule
from videoldm.diffusion.schedules import q_sample
from videoldm.diffusion.schedules import sample_timesteps
from videoldm.diffusion.sampling import SamplingOptions
from videoldm.diffusion.sampling import context_guided_sample
from videoldm.diffusion.sampling import guided_sample
from videoldm.diffusion.sampling import sample_with_known
