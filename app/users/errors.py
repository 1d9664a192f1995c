from app.errors import AlreadyExistsError, ConflictError, NotFoundError


class UserNotFoundError(NotFoundError):
    def __init__(self, user_id: str) -> None:
        super().__init__(f"user {user_id} does not exist")


class UserAlreadyExistsError(AlreadyExistsError):
    def __init__(self, username: str) -> None:
        super().__init__(f"a user named {username!r} already exists")


class LastAdminError(ConflictError):
    def __init__(self) -> None:
        super().__init__("this would leave the registry without an enabled admin")
