// A moderator's page as the OpenTok.js "Moderation" guide writes it: check the capabilities,
// then force a participant to mute, to stop publishing, or to leave.
/* global OT, apiKey, sessionId, token */
var session = OT.initSession(apiKey, sessionId);
var participantStream = null;
var participantConnection = null;
var log = [];

function note(text) {
  log.push(text);
  var item = document.createElement('li');
  item.textContent = text;
  document.getElementById('log').appendChild(item);
}

session.on({
  connectionCreated: function (event) {
    if (event.connection.connectionId !== session.connection.connectionId) {
      participantConnection = event.connection;
      note('connectionCreated');
    }
  },
  connectionDestroyed: function (event) {
    note('connectionDestroyed ' + event.reason);
  },
  streamCreated: function (event) {
    participantStream = event.stream;
    note('streamCreated hasAudio=' + event.stream.hasAudio);
    session.subscribe(event.stream, 'subscribers', { insertMode: 'append', width: 320, height: 240 });
  },
  streamDestroyed: function (event) {
    note('streamDestroyed ' + event.reason);
  },
  muteForced: function (event) {
    note('muteForced ' + event.active);
  },
  streamPropertyChanged: function (event) {
    note('streamPropertyChanged ' + event.changedProperty + ' ' + event.oldValue + ' -> ' + event.newValue);
  }
});

session.connect(token, function (error) {
  if (error) {
    note('connect error ' + error.name);
    return;
  }
  if (session.capabilities.forceDisconnect == 1) {
    note('can forceDisconnect');
  }
  if (session.capabilities.forceUnpublish == 1) {
    note('can forceUnpublish');
  }
  if (session.capabilities.forceMute == 1) {
    note('can forceMute');
  }
});

document.getElementById('mute').addEventListener('click', function () {
  session.forceMuteStream(participantStream).then(function () {
    note('forceMuteStream done');
  }).catch(function (error) {
    note('forceMuteStream error ' + error.name);
  });
});

document.getElementById('mute-all').addEventListener('click', function () {
  session.forceMuteAll().then(function () {
    note('forceMuteAll done');
  }).catch(function (error) {
    note('forceMuteAll error ' + error.name);
  });
});

document.getElementById('allow-unmute').addEventListener('click', function () {
  session.disableForceMute().then(function () {
    note('disableForceMute done');
  }).catch(function (error) {
    note('disableForceMute error ' + error.name);
  });
});

document.getElementById('unpublish').addEventListener('click', function () {
  session.forceUnpublish(participantStream, function (error) {
    note(error ? 'forceUnpublish error ' + error.name : 'forceUnpublish done');
  });
});

document.getElementById('disconnect').addEventListener('click', function () {
  session.forceDisconnect(participantConnection, function (error) {
    note(error ? 'forceDisconnect error ' + error.name : 'forceDisconnect done');
  });
});
