// Screen sharing as the OpenTok.js "Screen sharing" guide writes it: check the capability,
// publish with videoSource 'screen', and subscribe to screens at half their size.
/* global OT, apiKey, sessionId, token */
var session = OT.initSession(apiKey, sessionId);
var screenPublisher;
var log = [];

function note(text) {
  log.push(text);
  var item = document.createElement('li');
  item.textContent = text;
  document.getElementById('log').appendChild(item);
}

session.on('streamCreated', function (event) {
  var subOptions = {
    insertMode: 'append'
  };
  note('streamCreated ' + event.stream.videoType + ' ' + event.stream.hasAudio + ' ' + event.stream.hasVideo);
  if (event.stream.videoType === 'screen') {
    // This is a screen-sharing stream published by another client
    subOptions.width = event.stream.videoDimensions.width / 2;
    subOptions.height = event.stream.videoDimensions.height / 2;
    session.subscribe(event.stream, 'screen-subscriber', subOptions, function (error) {
      if (error) {
        note('subscribe error ' + error.name);
      } else {
        note('subscribed to screen ' + event.stream.videoDimensions.width + 'x' +
             event.stream.videoDimensions.height);
      }
    });
  } else {
    session.subscribe(event.stream, 'camera-subscriber', subOptions);
  }
});

session.on('streamDestroyed', function (event) {
  note('streamDestroyed ' + event.stream.videoType + ' ' + event.reason);
});

session.connect(token, function (error) {
  if (error) {
    note('connect error ' + error.name);
  } else {
    note('connected');
  }
});

document.getElementById('share').addEventListener('click', function () {
  OT.checkScreenSharingCapability(function (response) {
    if (!response.supported || response.extensionRegistered === false) {
      note('screen sharing not supported');
    } else if (response.extensionInstalled === false) {
      note('screen sharing needs an extension');
    } else {
      // Screen sharing is available. Publish the screen.
      screenPublisher = OT.initPublisher('screen-preview', {
        videoSource: 'screen',
        insertMode: 'append',
        width: '100%',
        height: '100%'
      }, function (error) {
        if (error) {
          note('initPublisher error ' + error.name);
        } else {
          session.publish(screenPublisher, function (error) {
            if (error) {
              note('publish error ' + error.name);
            } else {
              note('sharing ' + screenPublisher.stream.videoType);
              document.getElementById('stop').disabled = false;
            }
          });
        }
      });
      screenPublisher.on('mediaStopped', function () {
        note('mediaStopped');
      });
      screenPublisher.on('streamDestroyed', function (event) {
        note('screen publisher streamDestroyed ' + event.reason);
      });
    }
  });
});

document.getElementById('stop').addEventListener('click', function () {
  session.unpublish(screenPublisher);
  document.getElementById('stop').disabled = true;
});
