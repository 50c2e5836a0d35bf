"""One run per folder (libs/run/lock.py): a run.lock that is a link is refused and its target
never written; files a run appends to (log, stats) refuse links too (libs/run/atomic.open_own)."""
import errno
import logging

import pytest

from libs.run.errors import UserError, describe
from libs.run.lock import RunLock
from libs.run.log import MetricsWriter, setup_logger


def test_a_lock_that_is_a_link_is_refused_and_its_target_kept(tmp_path):
    target = tmp_path / "precious.txt"
    target.write_text("a user's file")
    work = tmp_path / "work"
    work.mkdir()
    (work / "run.lock").symlink_to(target)
    with pytest.raises(UserError, match=r"run.lock is a symbolic link \(to .*precious.txt\), not a lock this run "
                                        r"made.*remove the link or choose another --workdir"):
        RunLock(work).acquire()
    assert target.read_text() == "a user's file" and (work / "run.lock").is_symlink()
    (work / "run.lock").unlink()
    with RunLock(work):
        assert (work / "run.lock").is_file()
    assert not (work / "run.lock").exists()


def test_log_and_stats_are_never_written_through_a_link(tmp_path):
    target = tmp_path / "precious.txt"
    target.write_text("keep")
    for name in ("log.txt", "stats.jsonl"):
        work = tmp_path / name.split(".")[0]
        work.mkdir()
        (work / name).symlink_to(target)
        with pytest.raises(OSError) as e:
            if name == "log.txt":
                setup_logger("adadiff.test_link", work, True)
            else:
                MetricsWriter(work / name).write(step=1)
        assert e.value.errno == errno.ELOOP
        assert "a run never writes through a link it did not make" in describe(e.value)
    assert target.read_text() == "keep"


def test_a_full_disk_while_logging_is_one_error_not_logging_tracebacks(tmp_path, capsys):
    logger = setup_logger("adadiff.test_full", tmp_path, True)
    handler = next(h for h in logger.handlers if isinstance(h, logging.FileHandler))

    class FullDisk:
        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "log.txt"))

        def flush(self):
            pass

    handler.stream = FullDisk()
    with pytest.raises(OSError) as e:
        logger.info("step 1")
    assert e.value.errno == errno.ENOSPC
    logger.info("the clean-up's message")  # later messages skip the file, silently
    assert "Logging error" not in capsys.readouterr().err
