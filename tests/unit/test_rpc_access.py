"""The caller's identity comes from the socket (SO_PEERCRED, SO_PEERGROUPS)
and its role from [access]: the pure part, on a socketpair of this process."""

import os
import socket

from bkd import access
from bkd.config.models import Access


def test_the_identity_is_the_connecting_process_credentials_with_every_group():
    ours, theirs = socket.socketpair()
    with ours, theirs:
        who = access.identity_of(ours)
    assert (who.uid, who.gid, who.pid) == (os.getuid(), os.getgid(), os.getpid())
    assert who.groups == frozenset({os.getgid(), *os.getgroups()})


def test_roles_come_from_the_groups_taken_at_connect_and_the_access_of_now():
    import grp
    group = grp.getgrgid(os.getgid()).gr_name
    other = access.Identity(uid=4242, gid=os.getgid(), groups=frozenset({os.getgid()}), pid=1)
    assert access.role_of(other, Access(viewers=[group], operators=[], admins=[])) == "viewer"
    assert access.role_of(other, Access(viewers=[group], operators=[group], admins=[])) == "operator"
    assert access.role_of(other, Access(viewers=[], operators=[], admins=[])) is None
    assert not access.may_restore_remotely(other, Access(admins=[group]))
    assert access.may_restore_remotely(other, Access(remote_restorers=[group]))
    root = access.Identity(uid=0, gid=0, groups=frozenset({0}), pid=1)
    assert access.role_of(root, Access(viewers=[], operators=[], admins=[])) == "admin"
