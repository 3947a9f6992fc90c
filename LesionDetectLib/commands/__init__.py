"""One module per `lesiondetect` subcommand; see `LesionDetectLib.cli`."""
