// The OpenTok.js "Basic Video Chat" tutorial, as its documentation writes it, plus the event
// handlers the moderation guide adds, with `note()` keeping what the app sees (for the tests).
/* global OT, apiKey, sessionId, token */
var session;
var publisher;
var subscribers = [];
var log = [];

function note(text) {
  log.push(text);
  var item = document.createElement('li');
  item.textContent = text;
  document.getElementById('log').appendChild(item);
}

// Handling all of our errors here by alerting them
function handleError(error) {
  if (error) {
    note('error ' + error.name);
    alert(error.message);
  }
}

function initializeSession() {
  session = OT.initSession(apiKey, sessionId);

  // Subscribe to a newly created stream
  session.on('streamCreated', function streamCreated(event) {
    var subscriberOptions = {
      insertMode: 'append',
      width: '100%',
      height: '100%'
    };
    var subscriber = session.subscribe(event.stream, 'subscriber', subscriberOptions, function (error) {
      if (error) {
        handleError(error);
      } else {
        note('subscribed ' + event.stream.name);
      }
    });
    subscriber.on({
      videoDisabled: function (event) {
        note('videoDisabled ' + event.reason);
      },
      videoEnabled: function (event) {
        note('videoEnabled ' + event.reason);
      }
    });
    subscribers.push(subscriber);
  });

  session.on('streamDestroyed', function streamDestroyed(event) {
    note('streamDestroyed ' + event.reason);
  });

  session.on('sessionDisconnected', function sessionDisconnected(event) {
    note('sessionDisconnected ' + event.reason);
  });

  // A moderator muted every stream (active true), or lifted that state (active false)
  session.on('muteForced', function muteForced(event) {
    note('muteForced ' + event.active);
  });

  // initialize the publisher
  var publisherOptions = {
    insertMode: 'append',
    width: '100%',
    height: '100%',
    name: 'Browser'
  };
  publisher = OT.initPublisher('publisher', publisherOptions, handleError);

  publisher.on({
    streamCreated: function (event) {
      note('publishing ' + event.stream.streamId);
    },
    streamDestroyed: function (event) {
      note('publisher streamDestroyed ' + event.reason);
    },
    // A moderator muted this publisher's audio
    muteForced: function () {
      note('publisher muteForced');
    }
  });

  // Connect to the session
  session.connect(token, function callback(error) {
    if (error) {
      handleError(error);
    } else {
      note('connected');
      // If the connection is successful, publish the publisher to the session
      session.publish(publisher, handleError);
    }
  });
}

initializeSession();
