"""The folder nnU-Net searches through ``nnUNet_extTrainer`` (see ``trainers_folder``)."""
