# IPython kernel configuration for Agent Box sandboxes (installed in /etc/ipython).
# The root filesystem is read-only and the kernel is driven by programs, not people.
c = get_config()  # type: ignore[name-defined]  # noqa: F821

# History in an in-memory SQLite database: history_request (tail, range, search) and
# %history work, as Jupyter front ends and jupyter_kernel_test expect, and nothing is
# written to disk (the root is read-only; the home is the user's). Disabling the
# HistoryManager altogether saved a few ms per cell but left history empty.
c.HistoryManager.hist_file = ":memory:"
# Completion without jedi: its first completion parses much of the standard library
# (measured: 6 s under runc, 39 s under gVisor for `zi<Tab>`); IPython's own matchers
# complete names, attributes of live objects, keys and paths from the running kernel.
c.IPCompleter.use_jedi = False
# Tracebacks without ANSI colour: agents and API clients read them as plain text.
c.InteractiveShell.colors = "NoColor"
c.InteractiveShell.xmode = "Context"
# DataFrame -> structured JSON, matplotlib defaults; no pandas import at start-up.
c.InteractiveShellApp.extensions = ["agentbox_kernel"]
c.InlineBackend.figure_formats = {"png"}
c.InlineBackend.close_figures = True
c.Application.log_level = "WARN"


def _range_with_session_numbers() -> None:
    """history_request(range) names the current session 0 (IPython's shorthand) while
    tail and search name it by its number, so a front end that asks for the range of
    the session a tail reported gets rows of "session 0" back (jupyter_kernel_test's
    range test fails on it). Report the session's own number in range rows too."""
    from IPython.core.history import HistoryManager

    current_rows = HistoryManager._get_range_session

    def rows(self, start=1, stop=None, raw=True, output=False):  # type: ignore[no-untyped-def]
        for _, line, entry in current_rows(self, start, stop, raw, output):
            yield (self.session_number, line, entry)

    HistoryManager._get_range_session = rows


_range_with_session_numbers()
