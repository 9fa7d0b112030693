"""A script that misuses plexauth: mypy --strict against an installed copy must report every line marked E."""

import plexauth

config = plexauth.Config(client_identifier=42)  # E: a str is needed
account = plexauth.get_token_details("token")  # E: a Config is needed
name: int = account.username  # E: username is a str
plexauth.post_users_sign_in_data(config, "me", "pw", remember_me="yes")  # E: a bool is needed
plexauth.wait_for_pin(config, 7)  # E: a Pin is needed
config.token = "other"  # E: frozen
plexauth.get_jwt(config, "device-key.json")  # E: a DeviceKey is needed
expires: str = plexauth.verify_jwt(config, "a.b.c").expires_at  # E: expires_at is a datetime
