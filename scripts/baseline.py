"""The bot at a baseline revision, for the benchmarks that compare against it (scripts/bench,
scripts/bench-classify): one git worktree and one target directory under target/bench-classify,
shared by both."""
import os
import subprocess


def build_baseline(root, rev):
    """The path of `rev`'s release binary, checked out and built if needed."""
    work = os.path.join(root, "target", "bench-classify")
    os.makedirs(work, exist_ok=True)
    tree = os.path.join(work, "baseline-tree")
    if not os.path.exists(tree):
        subprocess.run(["git", "worktree", "add", "--detach", tree, rev], cwd=root, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    else:
        subprocess.run(["git", "checkout", "--quiet", "--detach", rev], cwd=tree, check=True)
    target = os.path.join(work, "baseline-target")
    subprocess.run(["cargo", "build", "--release", "--quiet", "--target-dir", target], cwd=tree,
                   check=True)
    return os.path.join(target, "release", "postmaster-bot")
