"""A training notebook's output, downloaded through the kaggle package (`kaggle kernels output`).

Standard library and the kaggle package only, so that `pull` downloads before torch and timm are
imported: offline or without credentials it stops in one sentence within about a second. The
package authenticates when it is imported and prints its login help to stdout where there are no
credentials (once on import, once more when asked again); that help is kept out of the output,
since the sentence names the way round: download elsewhere, then --pulled DIR.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from collections.abc import Iterator
from pathlib import Path

from src.core.utils import UserError


def _refuse(kernel: str, why: str) -> UserError:
    return UserError(f"cannot download the output of {kernel} ({why}); run `kaggle kernels output {kernel} -p DIR` "
                     "where Kaggle is reachable and pass --pulled DIR")


def _api(kernel: str):
    """An authenticated KaggleApi, its login help silenced."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            from kaggle.api.kaggle_api_extended import KaggleApi

            api = KaggleApi()
            api.authenticate()
        except ImportError:
            raise _refuse(kernel, "the kaggle package is not installed") from None
        except SystemExit:  # the package's way of saying there is no token
            raise _refuse(kernel, "no Kaggle credentials here: no KAGGLE_API_TOKEN, ~/.kaggle/access_token or "
                                  "kaggle.json") from None
    return api


def download_output(kernel: str, dest: Path) -> Path:
    """`kaggle kernels output KERNEL -p dest`; offline, one sentence naming the way round."""
    api = _api(kernel)
    from requests.exceptions import ConnectionError as Unreachable  # the kaggle package's HTTP client
    from requests.exceptions import Timeout

    try:
        with contextlib.redirect_stdout(io.StringIO()):
            api.kernels_output(kernel, str(dest))
    except (Unreachable, Timeout):
        raise _refuse(kernel, "the Kaggle API cannot be reached from here") from None
    except (Exception, SystemExit) as e:  # noqa: BLE001 - an unknown kernel, a refused token, a full disk
        raise _refuse(kernel, f"{type(e).__name__}: {str(e)[:120]}") from None
    return dest


@contextlib.contextmanager
def kernel_output(kernel: str, pulled: Path | None) -> Iterator[Path]:
    """The output folder of `kernel`: `pulled` when it was downloaded already, else a temporary
    folder it is downloaded into (removed afterwards)."""
    if pulled is not None:
        yield pulled
        return
    with tempfile.TemporaryDirectory(prefix="pull-") as tmp:
        yield download_output(kernel, Path(tmp))
