"""Config loading: every kind of bad input gives one clear error naming the file, the key and the problem."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from scanner.cli import main
from scanner.config import SecretRef, load_config
from scanner.errors import ConfigError

GOOD = """
[store]
url = "sqlite:///x.db"

[[tenants]]
name = "acme"
domains = ["Acme.Example."]
senders = ["google"]

[[exceptions]]
check = "forwarding.external"
subject = "CEO@acme.example"
reason = "board mirror"
approved_by = "it@acme.example"
expires = 2027-01-31
"""


def test_good_config_loads_with_bundled_defaults(write_config) -> None:
    config = load_config(write_config(GOOD))
    assert config.policy.inactive_days == 90
    assert "google" in config.senders and config.senders["google"].spf_include == ["_spf.google.com"]
    tenant = config.tenant_models()[0]
    assert tenant.domains == ("acme.example",)
    assert config.exception_models()[0].subject == "ceo@acme.example"
    assert len(config.digest) == 64


def test_unknown_key_names_file_and_key(write_config) -> None:
    path = write_config(GOOD.replace('name = "acme"', 'name = "acme"\ndomian = ["x.example"]'))
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    assert str(raised.value) == f"{path}: tenants[0].domian: unknown key"


def test_wrong_type_names_key_and_problem(write_config) -> None:
    path = write_config(GOOD + '\n[policy]\ninactive_days = "ninety"\n')
    with pytest.raises(ConfigError, match=r"policy\.inactive_days: Input should be a valid integer"):
        load_config(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nope.toml: config file not found"):
        load_config(tmp_path / "nope.toml")


def test_bad_date_names_the_exception_key(write_config) -> None:
    path = write_config(GOOD.replace("expires = 2027-01-31", 'expires = "2027-13-45"'))
    with pytest.raises(ConfigError, match=r"exceptions\[0\]\.expires: .*date"):
        load_config(path)


def test_invalid_toml_gives_line(write_config) -> None:
    path = write_config("[store\nurl = 1\n")
    with pytest.raises(ConfigError, match=r"not valid TOML: .*line 1"):
        load_config(path)


def test_exception_without_approver_is_an_error(write_config) -> None:
    path = write_config(GOOD.replace('approved_by = "it@acme.example"\n', ""))
    with pytest.raises(ConfigError, match=r"exceptions\[0\]\.approved_by: Field required"):
        load_config(path)


def test_unknown_sender_is_named(write_config) -> None:
    path = write_config(GOOD.replace('senders = ["google"]', 'senders = ["gogle"]'))
    with pytest.raises(ConfigError, match=r"tenants\[0\]\.senders: 'gogle' is not in the sender catalogue"):
        load_config(path)


def test_literal_secret_is_refused_and_never_echoed(write_config) -> None:
    path = write_config(GOOD + '\n[remediation]\nsecret = "hunter2-very-secret"\n')
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    assert "remediation.secret" in str(raised.value)
    assert "hunter2" not in str(raised.value)


def test_secret_references_resolve_only_when_used(write_config, tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "key").write_text("s3cret\n")
    config = load_config(
        write_config(GOOD.replace('senders = ["google"]', f'senders = ["google"]\ncredentials = "file:{tmp_path}/key"')
                     + '\n[remediation]\nsecret = "env:MW_TEST_SECRET"\n')
    )
    assert config.tenants[0].credentials == SecretRef(f"file:{tmp_path}/key")
    assert config.tenants[0].credentials.resolve() == "s3cret"
    with pytest.raises(ConfigError, match="environment variable MW_TEST_SECRET is not set"):
        config.remediation.secret.resolve()
    monkeypatch.setenv("MW_TEST_SECRET", "abc")
    assert config.remediation.secret.resolve() == "abc"


def test_files_tenant_needs_an_export_directory(write_config) -> None:
    path = write_config(GOOD.replace('name = "acme"', 'name = "acme"\nprovider = "files"'))
    with pytest.raises(ConfigError, match=r"tenants\[0\]: provider 'files' needs 'export'"):
        load_config(path)


def test_cli_reports_config_error_with_exit_status_2(write_config) -> None:
    path = write_config(GOOD.replace("[store]", "[stor]"))
    result = CliRunner().invoke(main, ["scan", "--config", str(path), "--out", str(path.parent / "out")])
    assert result.exit_code == 2
    assert f"mailwarden: {path}: stor: unknown key" in result.output


def test_nameserver_must_be_an_address(write_config) -> None:
    path = write_config(GOOD + '\n[dns]\nnameservers = ["127.0.0.1:5353", "[::1]:53", "ns1.example"]\n')
    with pytest.raises(ConfigError, match=r"dns\.nameservers: 'ns1.example' is not 'IP'"):
        load_config(path)


def test_trekmail_tenant_and_allowed_apps(write_config) -> None:
    config = load_config(write_config(
        '[[tenants]]\nname = "cedar"\nprovider = "trekmail"\ncredentials = "env:TREK"\ndomains = ["cedar.example"]\n'
        'allowed_apps = [" Zoom ", "123-ABC.apps.test", "zoom"]\n[tenants.trekmail]\nurl = "https://mail.cedar.example"\n'))
    [tenant] = config.tenant_models()
    assert tenant.provider == "trekmail" and tenant.allowed_apps == ("zoom", "123-abc.apps.test")
    assert config.tenants[0].trekmail is not None and config.tenants[0].trekmail.per_page == 100


def test_trekmail_tenant_needs_its_table_and_credentials(write_config) -> None:
    with pytest.raises(ConfigError, match=r"provider 'trekmail' needs a \[tenants.trekmail\] table"):
        load_config(write_config('[[tenants]]\nname = "cedar"\nprovider = "trekmail"\ncredentials = "env:T"\n'
                                 'domains = ["cedar.example"]\n'))
    with pytest.raises(ConfigError, match="per_page"):
        load_config(write_config('[[tenants]]\nname = "cedar"\nprovider = "trekmail"\ncredentials = "env:T"\n'
                                 'domains = ["cedar.example"]\n[tenants.trekmail]\nper_page = 500\n'))
@pytest.mark.parametrize(("table", "setting", "expected"), [
    ("dns", "timeout = inf", r"dns\.timeout: Input should be a finite number"),
    ("dns", "timeout = nan", r"dns\.timeout: Input should be a finite number"),
    ("dns", "timeout = 600.0", r"dns\.timeout: Input should be less than or equal to 60"),
    ("dns", 'timeout = "0.5"', r"dns\.timeout: Input should be a valid number.*without quotes"),
    ("policy", "inactive_days = 1e11", r"policy\.inactive_days: Input should be a valid integer"),
    ("policy", "inactive_days = 100000", r"policy\.inactive_days: Input should be less than or equal to 3650"),
    ("schedule", 'coalesce = "yes"', r"schedule\.coalesce: Input should be a valid boolean"),
    ("http", "timeout = -1.0", r"http\.timeout: Input should be greater than 0"),
    ("scan", "tenant_timeout = inf", r"scan\.tenant_timeout: Input should be a finite number"),
    ("email", 'host = "smtp.test"\nfrom = "mw@msp.test"\nport = "587"\n[[email.lists]]\nname = "a"\nto = ["a@b.test"]',
     r"email\.port: Input should be a valid integer"),
])
def test_numbers_are_finite_bounded_and_never_coerced(write_config, table: str, setting: str, expected: str) -> None:
    path = write_config(GOOD + f"\n[{table}]\n{setting}\n")
    with pytest.raises(ConfigError, match=rf"^{path}: {expected}"):
        load_config(path)


def test_a_bad_date_literal_names_the_key_and_line(write_config) -> None:
    path = write_config(GOOD.replace("expires = 2027-01-31", "expires = 2027-13-01"))
    with pytest.raises(ConfigError, match=rf"^{path}: exceptions\.expires: not a valid date \(YYYY-MM-DD.*'2027-13-01'.*line 15"):
        load_config(path)
    path = write_config(GOOD.replace("expires = 2027-01-31", 'expires = "2027-01-31"'))
    with pytest.raises(ConfigError, match=r"exceptions\[0\]\.expires: must be a date such as 2027-01-31 \(a TOML date"):
        load_config(path)


def test_store_url_errors_name_file_and_key_without_echoing_the_url(write_config) -> None:
    path = write_config(GOOD.replace('url = "sqlite:///x.db"', 'url = "postgres ql://u:pw-secret@db/x"'))
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    assert str(raised.value).startswith(f"{path}: store.url: not a database URL")
    assert "pw-secret" not in str(raised.value)
    path = write_config(GOOD.replace('url = "sqlite:///x.db"', 'url = "mysql://db/x"'))
    with pytest.raises(ConfigError, match=r"store\.url: the store works on SQLite and PostgreSQL, not 'mysql'"):
        load_config(path)


def test_a_nul_byte_in_an_address_is_refused_naming_the_key(write_config) -> None:
    path = write_config(GOOD.replace('subject = "CEO@acme.example"', 'subject = "ceo@acme.example\\u0000x"'))
    with pytest.raises(ConfigError, match=r"exceptions\[0\]\.subject: holds a NUL byte"):
        load_config(path)


@pytest.mark.parametrize("name", ["not a domain", "acme", "-acme.example", "acme..example", "a_b.example",
                                  "x" * 64 + ".example"])
def test_an_invalid_domain_name_is_exit_2(write_config, name: str) -> None:
    path = write_config(GOOD.replace('"Acme.Example."', f'"{name}"'))
    result = CliRunner().invoke(main, ["scan", "--config", str(path), "--out", str(path.parent / "out")])
    assert result.exit_code == 2
    assert f"{path}: tenants[0].domains: " in result.output and "is not a valid domain name" in result.output


def test_a_config_with_no_tenants_is_exit_2(write_config) -> None:
    path = write_config('[store]\nurl = "sqlite:///x.db"\n')
    result = CliRunner().invoke(main, ["scan", "--config", str(path), "--out", str(path.parent / "out")])
    assert result.exit_code == 2
    assert f"{path}: tenants: no [[tenants]] table" in result.output
