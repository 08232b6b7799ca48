"""The `openstack` command line with the ordinary password clouds.yaml of
docs/openstack-clients.md, against a vmops of its own on TCP with no fixed
token: the admin's password is the one generated at its first start.
The admin makes a project and a user with the member role on it; that
user signs in with a clouds.yaml of their own and may read and write in
their project, not manage flavors or the identity service."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.functional.conftest import REPO, Vmops, separate_service
from tests.functional.test_openstack_clients import OpenStackCLI as Cli
from tests.functional.test_openstack_clients import port as port  # the fixture

pytestmark = pytest.mark.extended

OPENSTACK = str(Path(sys.executable).parent / "openstack")
DOC = REPO / "docs" / "openstack-clients.md"


@pytest.fixture(scope="module")
def service(test_image_dir: Path, port: int) -> Iterator[Vmops]:
    with separate_service(test_image_dir, listen=f"127.0.0.1:{port}") as vm:
        yield vm


def password_clouds_yaml(port: int, password: str, user: str = "admin",
                         project: str = "admin") -> str:
    """The docs' password clouds.yaml for this port, user and project."""
    blocks: list[str] = re.findall(r"```yaml\n(clouds:.*?)```", DOC.read_text(), re.S)
    block = next((b for b in blocks if "auth_type: password" in b), None)
    assert block, f"no password clouds.yaml block in {DOC}"
    assert "endpoint_override" not in block
    return (block.replace(":8774", f":{port}").replace("PASSWORD", password)
            .replace("username: admin", f"username: {user}")
            .replace("project_name: admin", f"project_name: {project}"))


def cli_for(tmp: Path, port: int, password: str, user: str = "admin",
            project: str = "admin") -> Cli:
    path = tmp / f"{user}-clouds.yaml"
    path.write_text(password_clouds_yaml(port, password, user, project))
    return Cli(path, path.parent)


@pytest.fixture(scope="module")
def admin(service: Vmops, port: int, tmp_path_factory: pytest.TempPathFactory) -> Cli:
    generated = service.state_dir / "admin-password"
    assert generated.stat().st_mode & 0o777 == 0o600
    return cli_for(tmp_path_factory.mktemp("os"), port, generated.read_text().strip())


def test_the_admin_signs_in_with_the_generated_password(admin: Cli, service: Vmops) -> None:
    token = admin.json("token", "issue")
    assert token["id"] and token["project_id"] and token["user_id"]
    flavors = {f["Name"] for f in admin.json("flavor", "list")}
    assert "m1.tiny" in flavors
    assert [i["Name"] for i in admin.json("image", "list")] == ["tiny"]
    assert admin.json("server", "list") == []
    endpoints = admin.json("catalog", "list")
    assert {e["Type"] for e in endpoints} >= {"compute", "image", "network", "identity",
                                             "block-storage"}
    # The volume service is found through the catalog too.
    volume = admin.json("volume", "create", "--size", "1", "v1")
    assert [v["Name"] for v in admin.json("volume", "list")] == ["v1"]
    admin.run("volume", "delete", volume["id"])


def test_admin_makes_a_project_and_a_member_who_signs_in(admin: Cli, service: Vmops,
                                                         port: int, tmp_path: Path) -> None:
    project = admin.json("project", "create", "--description", "team one", "team1")
    assert project["name"] == "team1" and project["domain_id"] == "default"
    user = admin.json("user", "create", "--password", "alice-pw", "--project", "team1",
                      "alice")
    assert user["name"] == "alice" and user["default_project_id"] == project["id"]
    admin.run("role", "add", "--project", "team1", "--user", "alice", "member")
    assignments = admin.json("role", "assignment", "list", "--names", "--user", "alice")
    assert [(a["Role"], a["Project"]) for a in assignments] == [("member", "team1@Default")]
    assert {p["Name"] for p in admin.json("project", "list")} == {"admin", "team1"}

    alice = cli_for(tmp_path, port, "alice-pw", "alice", "team1")
    token = alice.json("token", "issue")
    assert (token["project_id"], token["user_id"]) == (project["id"], user["id"])
    assert "m1.tiny" in {f["Name"] for f in alice.json("flavor", "list")}
    refused = alice.run("flavor", "create", "--ram", "64", "--vcpus", "1", "--disk", "1",
                        "mine", check=False)
    assert refused.returncode != 0 and "403" in refused.stderr
    refused = alice.run("project", "create", "mine", check=False)
    assert refused.returncode != 0 and "403" in refused.stderr
    wrong = cli_for(tmp_path / "..", port, "not-it", "alice", "team1")
    failed = wrong.run("token", "issue", check=False)
    assert failed.returncode != 0 and "401" in failed.stderr

    # vmops' own CLI sees what the openstack client made.
    listed = {u["name"]: u for u in service.json("user", "list")}
    assert listed["alice"]["roles"] == ["team1:member"]
    bob = service.json("user", "create", "bob", "--project", "team1", "--role", "reader")
    bob_cli = cli_for(tmp_path, port, bob["password"], "bob", "team1")
    assert bob_cli.json("token", "issue")["project_id"] == project["id"]
    refused = bob_cli.run("keypair", "create", "--public-key", "/dev/null", "k", check=False)
    assert refused.returncode != 0

    admin.run("user", "delete", "alice")
    service.run("user", "delete", "bob")
    admin.run("project", "delete", "team1")
    assert alice.run("token", "issue", check=False).returncode != 0
    assert {p["Name"] for p in admin.json("project", "list")} == {"admin"}


def test_a_members_server_is_theirs_alone(admin: Cli, service: Vmops, port: int,
                                          tmp_path: Path) -> None:
    """A member makes a real guest with the openstack CLI; a user of another
    project neither sees nor touches it, through the CLI or openstacksdk;
    the admin sees it with --all-projects."""
    from openstack import config as os_config
    from openstack import connection, exceptions

    for team, user in (("red", "rita"), ("blue", "ben")):
        admin.run("project", "create", team)
        admin.run("user", "create", "--password", f"{user}-pw", "--project", team, user)
        admin.run("role", "add", "--project", team, "--user", user, "member")
    rita = cli_for(tmp_path, port, "rita-pw", "rita", "red")
    ben = cli_for(tmp_path, port, "ben-pw", "ben", "blue")
    try:
        created = rita.json("server", "create", "--image", "tiny", "--flavor", "m1.tiny",
                            "--wait", "r1")
        assert created["status"] == "ACTIVE"
        service.wait_console("r1", r"VMOPS-HEARTBEAT \d+")  # the guest is up
        shown = rita.json("server", "show", "r1")
        assert shown["project_id"] == rita.json("token", "issue")["project_id"]

        assert ben.json("server", "list") == []
        for verb in (("server", "show", created["id"]), ("server", "delete", created["id"]),
                     ("server", "stop", created["id"])):
            refused = ben.run(*verb, check=False)
            assert refused.returncode != 0, verb
            assert re.search(r"No server (found for|with a name or ID)|404", refused.stderr,
                             re.I), refused.stderr

        cloud = os_config.OpenStackConfig(config_files=[str(ben.env["OS_CLIENT_CONFIG_FILE"])])
        sdk = connection.Connection(config=cloud.get_one(cloud="vmops"))
        assert list(sdk.compute.servers()) == []
        with pytest.raises(exceptions.NotFoundException):
            sdk.compute.get_server(created["id"])
        with pytest.raises(exceptions.NotFoundException):
            sdk.compute.delete_server(created["id"], ignore_missing=False)

        everyone = admin.json("server", "list", "--all-projects")
        assert [s["Name"] for s in everyone] == ["r1"]
        assert service.server("r1")["status"] == "ACTIVE"  # ben's tries changed nothing
        rita.run("server", "delete", "--wait", "r1")
        assert rita.json("server", "list") == []
    finally:
        service.run("destroy", "r1", check=False)
        for team, user in (("red", "rita"), ("blue", "ben")):
            admin.run("user", "delete", user, check=False)
            admin.run("project", "delete", team, check=False)
