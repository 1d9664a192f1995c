def test_login_and_me(client, admin):
    r = admin.get("/v1/auth/me")
    assert r.status_code == 200
    assert r.get_json()["username"] == "admin-1"
