"""Old path of :mod:`kaggle_utils.models.__main__`, :mod:`kaggle_utils.models.weights`: an alias kept for one
release.
"""

from kaggle_utils._exports import moved

_EXPORTS: dict[str, str] = {
    **dict.fromkeys([
        "REPO_ROOT", "WEIGHTS_DIR", "MANIFEST_PATH", "ENV_DIRS", "ENV_MANIFEST", "HASH_PREFIX", "CHUNK",
        "WeightsError", "load_manifest", "hash_prefix", "expected_hash", "sha256_file", "check_digest",
        "verify_file", "search_dirs", "package_path", "how_to_get", "resolve_weights", "load_weights",
        "default_dest", "download", "list_weights",
    ], "kaggle_utils.models.weights"),
    **dict.fromkeys([
        "main",
    ], "kaggle_utils.models.__main__"),
}
__getattr__, __dir__ = moved("kaggle_utils.weights", _EXPORTS, globals())

if __name__ == "__main__":
    import sys

    from kaggle_utils.models.__main__ import main

    sys.exit(main())
