"""The diffusion model: SDXL/SD 1.5 loading, the miniature toy-world SDXL, its configs."""
