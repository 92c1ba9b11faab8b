"""Device transports: Socket.IO on "/" and the notifier that emits to devices."""
