"""Extension singletons, created at import and bound to the app in ``create_app``."""

from flask_smorest import Api
from flask_socketio import SocketIO

socketio = SocketIO()
api = Api()
