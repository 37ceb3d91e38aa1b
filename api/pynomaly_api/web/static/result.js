// The result page's threshold slider: moves the histogram's threshold line and shows how many
// rows score above it, from counts the server made once (no scores are sent, nothing is
// scored again). The download links follow the slider's threshold.
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("stops").textContent);
  var slider = document.getElementById("threshold-slider");
  var svg = document.getElementById("histogram");
  var line = document.getElementById("threshold-line");
  var lo = +svg.dataset.lo, hi = +svg.dataset.hi, x0 = +svg.dataset.x0, w = +svg.dataset.w;
  var bars = svg.querySelectorAll("rect.bar");
  var start = +slider.value;
  var ints = new Intl.NumberFormat("en");
  var links = ["download-csv", "download-parquet"].map(function (id) { return document.getElementById(id); })
    .filter(Boolean);
  var hrefs = links.map(function (a) { return a.getAttribute("href"); });

  function text(id, value) { document.getElementById(id).textContent = value; }

  function update() {
    var i = +slider.value, t = data.t[i], k = data.above[i];
    text("flagged-count", ints.format(k));
    text("slider-flagged", ints.format(k));
    text("flagged-rate", (data.n ? 100 * k / data.n : 0).toFixed(2) + "%");
    text("threshold-value", String(Number(t.toPrecision(6))));
    slider.setAttribute("aria-valuetext", "threshold " + t.toPrecision(6) + ", " + k + " rows flagged");
    if (line) {
      var x = (x0 + w * (t - lo) / (hi - lo)).toFixed(2);
      line.setAttribute("x1", x);
      line.setAttribute("x2", x);
    }
    for (var b = 0; b < bars.length; b++) {
      bars[b].classList.toggle("flagged", +bars[b].dataset.left >= t);
    }
    links.forEach(function (a, j) {
      // String(t) is the shortest text that reads back as t, so the server gets t exactly.
      a.setAttribute("href", i === start ? hrefs[j] : hrefs[j] + "&threshold=" + encodeURIComponent(String(t)));
    });
  }

  slider.addEventListener("input", update);
  document.getElementById("slider-reset").addEventListener("click", function () {
    slider.value = start;
    update();
    slider.focus();
  });
})();
