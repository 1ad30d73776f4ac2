"""Old path of :mod:`kaggle_utils.kernel.verify`: an alias kept for one release.
"""

from kaggle_utils._exports import moved

_EXPORTS: dict[str, str] = {
    **dict.fromkeys([
        "check_manifest", "write_manifest", "link_image", "BLOCK_SOCKETS", "PROBE", "network_isolation",
        "layout_test_set", "default_test_images", "VerifyReport", "verify",
    ], "kaggle_utils.kernel.verify"),
}
__getattr__, __dir__ = moved("kaggle_utils.kernel_verify", _EXPORTS, globals())
