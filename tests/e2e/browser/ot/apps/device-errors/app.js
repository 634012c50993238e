// The camera and microphone errors as the OpenTok.js documentation handles them: the
// initPublisher completion handler's error name, and the Publisher's access events.
/* global OT, apiKey, sessionId, token */
var session = OT.initSession(apiKey, sessionId);
var log = [];

function note(text) {
  log.push(text);
  var item = document.createElement('li');
  item.textContent = text;
  document.getElementById('log').appendChild(item);
}

function showMessage(text) {
  var message = document.getElementById('message');
  message.textContent = text;
  message.style.display = 'block';
}

var publisher = OT.initPublisher('publisher', { insertMode: 'append' }, function (error) {
  if (error) {
    note('initPublisher error ' + error.name + ' ' + error.code);
    if (error.name === 'OT_USER_MEDIA_ACCESS_DENIED') {
      showMessage('Please allow access to the camera and microphone, then reload the page.');
    } else if (error.name === 'OT_HARDWARE_UNAVAILABLE') {
      showMessage('The camera or microphone is in use by another application.');
    } else {
      showMessage('Failed to get access to your camera or microphone: ' + error.message);
    }
  } else {
    note('initPublisher ok');
  }
});

publisher.on({
  accessDialogOpened: function () {
    note('accessDialogOpened');
  },
  accessDialogClosed: function () {
    note('accessDialogClosed');
  },
  accessAllowed: function () {
    note('accessAllowed');
  },
  accessDenied: function () {
    note('accessDenied');
  }
});

// Without a camera the page still joins the session (to chat, or to watch the others).
session.connect(token, function (error) {
  note(error ? 'connect error ' + error.name : 'connected');
});
