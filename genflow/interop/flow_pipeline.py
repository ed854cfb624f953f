"""A diffusers pipeline for an exported genflow flow run (rectified flow, or flow matching with
``sigma_min``): Euler steps of the learned velocity from noise at ``t = 1`` to data at ``t = 0``.

This file is copied beside an export's weights as ``genflow_flow_pipeline.py`` and names
itself in ``model_index.json``, so ``DiffusionPipeline.from_pretrained(folder,
trust_remote_code=True)`` loads it without genflow installed: it imports only torch and
diffusers. It exists because no stock diffusers pipeline runs a ``UNet2DModel`` on a
flow-matching schedule, and because genflow's backbone sees its input scaled by
``c_in(t) = 1 / sqrt(alpha^2 + sigma^2)`` (Karras et al. 2022, table 1) and its time as
``999 t``, which a stock pipeline cannot express. The steps themselves are those of
``FlowMatchEulerDiscreteScheduler`` (``x <- x + (sigma_next - sigma) v``, Liu et al. 2022,
eq. 1; Lipman et al. 2023), on genflow's uniform grid ``sigma = 1, 1 - 1/n, ..., 1/n, 0``.
"""

from __future__ import annotations

import torch
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler, ImagePipelineOutput, UNet2DModel
from diffusers.utils.torch_utils import randn_tensor

TIMESTEP_SCALE = 999.0


class GenflowFlowPipeline(DiffusionPipeline):
    """Sample a genflow flow run: ``x_t = (1 - t) x0 + (sigma_min + (1 - sigma_min) t) eps``,
    the UNet predicting the velocity ``dx_t / dt``."""

    model_cpu_offload_seq = "unet"

    def __init__(self, unet: UNet2DModel, scheduler: FlowMatchEulerDiscreteScheduler, sigma_min: float = 0.0) -> None:
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)
        self.register_to_config(sigma_min=sigma_min)

    def input_scale(self, t: torch.Tensor) -> torch.Tensor:
        """``c_in(t)`` of genflow's preconditioner for this path."""
        sigma = self.config.sigma_min + (1 - self.config.sigma_min) * t
        return torch.rsqrt((1 - t) ** 2 + sigma**2)

    @torch.no_grad()
    def __call__(
        self,
        batch_size: int = 1,
        num_inference_steps: int = 20,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
    ) -> ImagePipelineOutput | tuple:
        """Images from ``num_inference_steps`` Euler steps (one UNet evaluation each), starting at
        ``latents`` or at fresh standard normal noise."""
        size = self.unet.config.sample_size
        shape = (batch_size, self.unet.config.in_channels, size, size)
        dtype = self.unet.dtype
        image = (
            latents.to(self.device, dtype)
            if latents is not None
            else randn_tensor(shape, generator=generator, device=self.device, dtype=dtype)
        )
        sigmas = [1 - i / num_inference_steps for i in range(num_inference_steps)]
        self.scheduler.set_timesteps(sigmas=sigmas, device=self.device)
        for timestep in self.progress_bar(self.scheduler.timesteps):
            t = timestep.double() / self.scheduler.config.num_train_timesteps
            scaled = image * self.input_scale(t).to(dtype)
            velocity = self.unet(scaled, (t * TIMESTEP_SCALE).expand(image.shape[0])).sample
            image = self.scheduler.step(velocity, timestep, image).prev_sample.to(dtype)
        image = (image / 2 + 0.5).clamp(0, 1).cpu().permute(0, 2, 3, 1).numpy()
        if output_type == "pil":
            image = self.numpy_to_pil(image)
        if not return_dict:
            return (image,)
        return ImagePipelineOutput(images=image)
