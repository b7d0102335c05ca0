"""rsync.describe_failure names an ssh failure whatever exit code rsync chose,
by ssh's own words; a local file rsync may not read is not one of them.
Found by the role-matrix test: a local source with an unreadable file was
reported to every role as "rsync exited with code 23 (the SSH connection failed)",
because rsync's "Permission denied (13)" matches ssh's "Permission denied (publickey)"."""


from bkd.pipeline import rsync

LOCAL = ['rsync: [sender] send_files failed to open "/srv/data/x": Permission denied (13)',
         "rsync error: some files/attrs were not transferred (see previous errors) (code 23) at main.c(1394)"]


def test_an_unreadable_local_file_is_not_an_ssh_failure():
    assert rsync.describe_failure(23, LOCAL).startswith("rsync exited with code 23 (partial transfer due to error)")


def test_a_refused_ssh_login_is_one_when_ssh_itself_says_so():
    said = ["user@web1: Permission denied (publickey,password)."]  # ssh -E: the local client's own log
    stderr = ["rsync: connection unexpectedly closed (0 bytes received so far) [Receiver]"]
    assert rsync.describe_failure(12, stderr, said) == ("rsync exited with code 12 (the SSH connection failed): "
                                                       "ssh: user@web1: Permission denied (publickey,password).")


def test_ssh_s_words_on_the_host_s_stderr_are_not_ssh_failing():
    """Issue 18, item 7: the remote side's stderr reaches rsync's; a host (or a
    file name in an rsync error) that prints ssh's words is not ssh failing."""
    stderr = ["user@web1: Permission denied (publickey).", "rsync: connection unexpectedly closed"]
    assert rsync.describe_failure(12, stderr).startswith("rsync exited with code 12 (error in rsync protocol data")
