"""ComfyUI model folders this pack reads, and clear errors for missing files.

Registration is cheap (no file access) and never overrides a folder another pack or
``extra_model_paths.yaml`` already set up: it only adds the default path and extensions.
"""
from __future__ import annotations

import os

FOLDERS = {
    "dualanodiff": {".safetensors", ".bin"},
    "u2net": {".pth", ".safetensors", ".onnx"},
    "sams": {".pth", ".safetensors"},
}

WHAT_GOES_WHERE = {
    "dualanodiff": "a DualAnoDiff checkpoint (.safetensors from `dualanodiff train`/`dualanodiff convert`) "
                   "or a reference pytorch_lora_weights.safetensors/.bin",
    "u2net": "U-2-Net weights u2net.pth (full) or u2netp.pth (small) from the U-2-Net project page "
             "(github.com/xuebinqin/U-2-Net)",
    "sams": "a Segment Anything checkpoint such as sam_vit_b_01ec64.pth (github.com/facebookresearch/segment-anything)",
}


def register_model_folders() -> None:
    import folder_paths

    for name, extensions in FOLDERS.items():
        default = os.path.join(folder_paths.models_dir, name)
        entry = folder_paths.folder_names_and_paths.get(name)
        if entry is None:
            folder_paths.folder_names_and_paths[name] = ([default], set(extensions))
            continue
        paths, known = entry[0], entry[1]
        if default not in paths:
            paths.append(default)
        if isinstance(known, set) and known:  # an empty set means "any extension": keep it that way
            known.update(extensions)


def file_choices(folder: str) -> list:
    """Files of a model folder for a combo widget (empty folders give an empty list, which ComfyUI shows)."""
    import folder_paths

    register_model_folders()  # idempotent; covers a pack module imported before ComfyUI was importable
    try:
        return folder_paths.get_filename_list(folder)
    except Exception:  # folder removed by another pack's configuration
        return []


def resolve(folder: str, name: str) -> str:
    """Full path of ``name`` in ``folder``, or an error that says which file to put where."""
    import folder_paths

    register_model_folders()
    path = folder_paths.get_full_path(folder, name) if name else None
    if path is None or not os.path.isfile(path):
        where = ", ".join(folder_paths.get_folder_paths(folder)) or f"models/{folder}"
        raise FileNotFoundError(
            f"{name or 'no file selected'}: not found in the '{folder}' model folder ({where}). "
            f"Put {WHAT_GOES_WHERE.get(folder, 'the file')} there (or add a path for '{folder}' in "
            "extra_model_paths.yaml) and refresh the page; nothing is downloaded automatically."
        )
    return path
