// A training run's page reloads itself every second until the run is done.
setTimeout(function () { window.location.reload(); }, 1000);
