"""``experiments.tools.worktrees``: checkouts of revisions for side-by-side benchmarks."""

import shutil

import pytest

from experiments.tools import worktrees

pytestmark = pytest.mark.skipif(
    shutil.which("git") is None or not (worktrees.REPO_ROOT / ".git").exists(),
    reason="needs a git checkout",
)


def test_a_checkout_of_head_has_the_code_and_is_removed_afterwards():
    commits = worktrees.resolve(["HEAD"])
    with worktrees.checkouts(commits) as checkouts:
        commit, path = checkouts["HEAD"]
        assert commit == commits["HEAD"]
        assert (path / "drd_jax" / "train.py").is_file()
    assert not path.exists()


def test_an_unknown_revision_is_named():
    with pytest.raises(ValueError, match="'no-such-revision' is not a git revision"):
        worktrees.resolve(["no-such-revision"])
