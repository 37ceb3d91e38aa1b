// Refuses a file larger than the server accepts before it is sent (the server checks again
// and says so too; this only spares the wait).
(function () {
  "use strict";
  var form = document.querySelector("form[data-max-bytes]");
  var input = document.getElementById("file");
  var note = document.getElementById("file-error");
  if (!form || !input || !note) return;
  var max = +form.dataset.maxBytes;
  input.addEventListener("change", function () {
    var f = input.files && input.files[0];
    var message = "";
    if (f && f.size > max) {
      message = f.name + " is " + (f.size / 1048576).toFixed(1) + " MB; this server accepts at most " +
        (max / 1048576).toFixed(1) + " MB per upload.";
    }
    input.setCustomValidity(message);
    note.textContent = message;
    note.hidden = !message;
  });
})();
