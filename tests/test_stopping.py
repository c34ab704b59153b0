"""reid.stopping: SIGINT, SIGTERM and SIGHUP as a request to stop, ignored signals left ignored, every handler
restored, and a hung-up terminal that cannot end the run before it saves."""
import os
import pty
import signal
import subprocess
import sys
import threading

import pytest

from reid import stopping
from reid.stopping import StopRequest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def dispositions():
    """Set signal dispositions for one test (``dispositions(SIGHUP=signal.SIG_IGN)``) and put every stop
    signal back as it was afterwards, whatever the test did."""
    before = {signum: signal.getsignal(signum) for signum in stopping.STOP_SIGNALS}

    def set_dispositions(**handlers):
        for name, handler in handlers.items():
            signal.signal(getattr(signal, name), handler)

    yield set_dispositions
    for signum, handler in before.items():
        signal.signal(signum, handler)


def started_from_a_terminal():
    """SIGHUP's default disposition in a child process, as for a command typed at a terminal, even when the
    test suite itself runs under nohup (which starts it with SIGHUP ignored, and children inherit that)."""
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


def an_outside_handler(signum, frame):
    raise AssertionError("the handler installed before StopRequest ran")


@pytest.mark.parametrize("name", ["SIGINT", "SIGTERM", "SIGHUP"])
def test_each_stop_signal_sets_the_flag_and_the_previous_handlers_come_back(dispositions, name):
    dispositions(SIGINT=signal.default_int_handler, SIGTERM=an_outside_handler, SIGHUP=signal.SIG_DFL)
    with StopRequest() as stop:
        assert not stop
        os.kill(os.getpid(), getattr(signal, name))
        assert stop and stop.signal_name == name
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.getsignal(signal.SIGTERM) is an_outside_handler
    assert signal.getsignal(signal.SIGHUP) is signal.SIG_DFL


def test_a_second_signal_stops_at_once(dispositions):
    dispositions(SIGINT=signal.default_int_handler, SIGTERM=signal.SIG_DFL, SIGHUP=signal.SIG_DFL)
    with StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGHUP)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
    assert stop.signal_name == "SIGHUP"


@pytest.mark.parametrize("name", ["SIGINT", "SIGHUP"])
def test_a_signal_ignored_when_the_run_starts_stays_ignored(dispositions, name):
    """nohup starts a run with SIGHUP ignored so that it outlives its terminal; a non-interactive shell starts
    background jobs (and with them some CI runners' test suites) with SIGINT ignored."""
    dispositions(**{name: signal.SIG_IGN})
    with StopRequest() as stop:
        assert signal.getsignal(getattr(signal, name)) is signal.SIG_IGN
        os.kill(os.getpid(), getattr(signal, name))
        assert not stop
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signal_name == "SIGTERM"
    assert signal.getsignal(getattr(signal, name)) is signal.SIG_IGN


def test_outside_the_main_thread_nothing_is_installed(dispositions):
    dispositions(SIGTERM=an_outside_handler)
    outcome = {}

    def enter_and_leave():
        with StopRequest() as stop:
            outcome["handler"] = signal.getsignal(signal.SIGTERM)
            outcome["stopped"] = bool(stop)

    thread = threading.Thread(target=enter_and_leave)
    thread.start()
    thread.join()
    assert outcome == {"handler": an_outside_handler, "stopped": False}


def test_an_output_that_is_not_a_terminal_is_left_alone():
    assert stopping.silence_hung_up_terminal() == []


# A training loop stand-in: waits for a stop, then waits until the test has closed its terminal (so that the
# order of events is fixed), prints the resume line as main.py does, and leaves a marker that it got that far.
AFTER_A_HANGUP = """
import os, sys, time
from reid.stopping import StopRequest

marker, go_on = sys.argv[1], sys.argv[2]
with StopRequest() as stop:
    print("training", flush=True)
    while not stop:
        time.sleep(0.01)
while not os.path.exists(go_on):
    time.sleep(0.01)
print(f"Stopped by {stop.signal_name}; resume with: python main.py ... --resume checkpoint.pth.tar", flush=True)
print("and on stderr", file=sys.stderr, flush=True)
with open(marker, "w") as handle:
    handle.write(stop.signal_name)
"""


def test_a_dropped_ssh_session_stops_the_run_and_its_last_words_cannot_crash_it(tmp_path):
    """The terminal hangs up (its pseudo-terminal master closes, as when sshd loses the connection), then
    SIGHUP arrives: every later write to the terminal would fail with EIO and end the run before it saved."""
    marker, go_on = tmp_path / "marker", tmp_path / "go-on"
    master, terminal = pty.openpty()
    process = subprocess.Popen([sys.executable, "-c", AFTER_A_HANGUP, str(marker), str(go_on)], cwd=ROOT,
                               stdin=subprocess.DEVNULL, stdout=terminal, stderr=terminal,
                               preexec_fn=started_from_a_terminal)
    os.close(terminal)
    try:
        assert b"training" in os.read(master, 100)
        os.close(master)
        process.send_signal(signal.SIGHUP)
        go_on.write_text("")
        assert process.wait(timeout=60) == 0
    finally:
        process.kill()
        process.wait()
    assert marker.read_text() == "SIGHUP"
