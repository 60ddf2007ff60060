"""Image priors for the generative attacks: a DCGAN trained on public identities (``dcgan``) and an
adapter for official StyleGAN2-ADA pickles (``stylegan2-ada``)."""
